"""The reward model trains alike at every layout: one optimizer step at TP2 (with and without sequence
parallelism), PP2, DP2 with the distributed optimizer and on the DeepSpeed engine equals one step in a single
process, within the tolerances of tests/test_parity.py (first-step loss and gradients 1e-5, later losses 1e-4).
The reference is the single-process run, whose loss itself equals a hand computation from transformers'
rewards (tests/test_reward.py)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env, torchrun
from parity_outputs import assert_gradients_match, merge

WORKER = str(REPO / "tests" / "parity" / "reward_worker.py")
TP2 = ["--tensor-model-parallel-size", "2"]
LAYOUTS = {  # name: the layout's flags, on 2 processes
    "tp2": TP2,
    "tp2_sp": [*TP2, "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2_distopt": ["--use-distributed-optimizer"],
    "deepspeed_zero2_dp2": ["--zero-engine", "deepspeed", "--zero-stage", "2"],
    "deepspeed_zero1_tp2_sp": ["--zero-engine", "deepspeed", "--zero-stage", "1", *TP2, "--sequence-parallel"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_parity")
    proc = subprocess.run([sys.executable, WORKER, "--layouts", json.dumps({"ref": []}), "--out", str(root)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    torchrun(2, [WORKER, "--layouts", json.dumps(LAYOUTS), "--out", str(root)])
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_step_matches_single_process(runs, layout):
    ref, got = runs / "ref", runs / layout
    tp, pp = (2 if "tp2" in layout else 1), (2 if "pp2" in layout else 1)
    assert json.load(open(got / "layout.json")) == {"tp": tp, "pp": pp, "dp": 2 // (tp * pp)}
    r_ref, r = json.load(open(ref / "report.json")), json.load(open(got / "report.json"))
    assert len(r) == len(r_ref) == 2
    (loss_ref, acc_ref, margin_ref), (loss, acc, margin) = r_ref[0], r[0]
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref), (layout, loss, loss_ref)
    assert acc == acc_ref and abs(margin - margin_ref) <= 1e-5 * max(abs(margin_ref), 1e-3), (layout, r[0], r_ref[0])
    # the second step's loss is that of the weights after one update
    assert abs(r[1][0] - r_ref[1][0]) <= 1e-4 * abs(r_ref[1][0]), (layout, r[1], r_ref[1])
    if "deepspeed" in layout:  # DeepSpeed's model is the same one; its gradients stay inside the engine
        return
    w_ref, w = merge(ref, "weights"), merge(got, "weights")
    assert w.keys() == w_ref.keys() and "reward_head.weight" in w and "output_layer.weight" not in w
    assert all(torch.equal(w[k], w_ref[k]) for k in w_ref), layout
    assert_gradients_match(ref, got, layout)


def test_reference_learns(runs):
    """The step moves the reward: a frozen model would make the comparisons vacuous."""
    report = json.load(open(runs / "ref" / "report.json"))
    grads = merge(runs / "ref", "grads")
    assert grads["reward_head.weight"].abs().sum() > 0 and report[0][0] != report[1][0]
