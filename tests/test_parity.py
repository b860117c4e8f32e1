"""Every parallel layout trains the tiny Qwen exactly like one process does.

Reference: TP1/PP1/DP1 in a single process, itself anchored on transformers' Qwen2ForCausalLM
(test_hf_parity.py). Each layout starts from the same seed; its initial weights, first-step
gradients (gathered to full shape) and 5-step loss curve are compared with the reference's.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env, torchrun
from parity_outputs import WORKER, assert_gradients_match, merge

TP2 = ["--tensor-model-parallel-size", "2"]
PP2 = ["--pipeline-model-parallel-size", "2"]
VP2 = ["--num-layers-per-virtual-pipeline-stage", "1"]  # the tiny model's 4 layers over PP 2: 2 stages each
COMPILED_SDPA = ["--transformer-impl", "sdpa", "--compile-layers"]

LAYOUTS = {
    # name: (processes, the layout's training flags)
    "tp2": (2, TP2),
    "tp2_sp": (2, [*TP2, "--sequence-parallel"]),
    "pp2": (2, PP2),
    "dp2": (2, []),
    "tp2_pp2": (4, [*TP2, *PP2]),
    "pp2_dp2": (4, PP2),
    "dp2_distopt": (2, ["--use-distributed-optimizer"]),
    "dp2_distopt_overlap": (2, ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather"]),
    "pp2_vp2": (2, [*PP2, *VP2]),
    "tp2_pp2_vp2_sp": (4, [*TP2, *PP2, *VP2, "--sequence-parallel"]),
    "recompute_full": (1, ["--recompute-granularity", "full"]),
    "tp2_recompute_selective": (2, [*TP2, "--recompute-granularity", "selective"]),
    # PyTorch's fused attention for the whole 5-step curve; every local layout above also repeats
    # its first step with it (test_sdpa_matches_local_at_every_layout).
    "sdpa": (1, ["--transformer-impl", "sdpa"]),
    # each layer as one compiled graph (--compile-layers), on the GPU's default back end; with TP and
    # sequence parallelism, the layer's collectives run inside the compiled forward and backward
    "sdpa_compiled": (1, COMPILED_SDPA),
    "tp2_sp_compiled": (2, [*TP2, "--sequence-parallel", *COMPILED_SDPA]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference and every layout, one launch per process count."""
    root = tmp_path_factory.mktemp("parity")
    groups: dict[int, dict[str, list[str]]] = {1: {"ref": []}}
    for name, (nproc, flags) in LAYOUTS.items():
        groups.setdefault(nproc, {})[name] = flags
    for nproc, layouts in groups.items():
        target = [WORKER, "--layouts", json.dumps(layouts), "--out", str(root)]
        if nproc == 1:
            proc = subprocess.run([sys.executable, *target], cwd=REPO, env=quiet_env(), capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        else:
            torchrun(nproc, target)
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(runs, layout):
    ref, got = runs / "ref", runs / layout
    # The processes built the layout its name says from its flags (else a TP2 run could pass as DP2).
    nproc = LAYOUTS[layout][0]
    tp, pp = 2 if "tp2" in layout else 1, 2 if "pp2" in layout else 1
    expected = {"tp": tp, "pp": pp, "dp": nproc // (tp * pp), "chunks": 2 if "vp2" in layout else 1}
    assert json.load(open(got / "layout.json")) == expected
    # Same initial weights from the same seed, whatever the layout.
    w_ref, w = merge(ref, "weights"), merge(got, "weights")
    assert w.keys() == w_ref.keys()
    for name in w_ref:
        assert torch.equal(w[name], w_ref[name]), f"{layout}: initial {name} differs"
    # First-step loss and gradients.
    l_ref, l = json.load(open(ref / "losses.json")), json.load(open(got / "losses.json"))
    assert abs(l[0] - l_ref[0]) <= 1e-5 * abs(l_ref[0]), (layout, l[0], l_ref[0])
    assert_gradients_match(ref, got, layout)
    # Loss curve over 5 optimizer steps.
    assert len(l) == len(l_ref) == 5
    for step, (a, b) in enumerate(zip(l, l_ref)):
        assert abs(a - b) <= 1e-4 * abs(b), f"{layout}: step {step} loss {a} vs {b}"


SDPA_CHECKED = ["ref"] + [name for name, (_, flags) in LAYOUTS.items() if "sdpa" not in flags]


@pytest.mark.parametrize("layout", SDPA_CHECKED)
def test_sdpa_matches_local_at_every_layout(runs, layout):
    """The sdpa back end's first-step loss and gradients at this layout equal the single-process
    local reference's (so the fused attention sees the same heads, sequence shards and masks)."""
    ref, got = runs / "ref", runs / layout
    l_ref, l = json.load(open(ref / "losses.json"))[0], json.load(open(got / "sdpa_loss.json"))
    assert abs(l - l_ref) <= 1e-5 * abs(l_ref), (layout, l, l_ref)
    assert_gradients_match(ref, got, layout, "sdpa_grads")


def test_reference_learns(runs):
    """The reference itself moves: a frozen model would make every comparison above vacuous."""
    l = json.load(open(runs / "ref" / "losses.json"))
    g = merge(runs / "ref", "grads")
    assert all(t.abs().sum() > 0 for t in g.values())
    assert len(set(l)) == len(l)
