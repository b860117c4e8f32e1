"""PPO aligns, end to end, at tiny scale on the CPU (examples/ppo/align_demo.py --quick, docs/ppo.md "It aligns"):
a reward model trained on preferences for a marker word, a tiny SFT policy that says it only sometimes, then PPO.
On held-out prompts (never in the PPO prompt set), counted by a rule on the decoded replies and not by the reward
model: PPO raises the marker's frequency with the KL to the reference within the stated bound, and with a very high
KL coefficient the policy stays at the reference (frequency about unchanged, KL tiny)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, quiet_env

# docs/ppo.md states these bounds (nats per reply, the job's estimate: summed log-ratio to the reference), on the
# held-out replies and on the mean of the logged iterations (one 16-reply batch is noisy: one reached 2.6 nats).
KL_BOUND = 2.0
HIGH_KL_BOUND = 0.1
HIGH_KL_DRIFT = 0.15  # the marker's frequency at the very high coefficient, from the SFT policy's (96 replies each)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("ppo_align")
    proc = subprocess.run([sys.executable, "examples/ppo/align_demo.py", "--quick", "--workdir", str(work)], cwd=REPO,
                          env=quiet_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    metrics = {name: [json.loads(line) for line in open(work / f"{name}.jsonl")] for name in ("ppo", "ppo_high_kl")}
    return json.loads((work / "results.json").read_text()), metrics, work


def test_ppo_raises_the_marker_within_the_kl_bound(results):
    found, metrics, _ = results
    sft, ppo = found["sft"], found["ppo"]
    print(f"\nmarker frequency on held-out prompts: SFT {sft['marker_frequency']:.3f}, "
          f"PPO {ppo['marker_frequency']:.3f} (KL {ppo['kl']:.3f})")
    assert 0.05 <= sft["marker_frequency"] <= 0.5, sft  # the SFT policy says it only sometimes
    assert ppo["marker_frequency"] >= sft["marker_frequency"] + 0.3, (sft, ppo)
    assert 0 < ppo["kl"] <= KL_BOUND
    assert sum(r["kl"] for r in metrics["ppo"]) / len(metrics["ppo"]) <= KL_BOUND, [r["kl"] for r in metrics["ppo"]]


def test_a_very_high_kl_coefficient_keeps_the_reference(results):
    found, metrics, _ = results
    sft, high = found["sft"], found["ppo_high_kl"]
    assert abs(high["marker_frequency"] - sft["marker_frequency"]) <= HIGH_KL_DRIFT, (sft, high)
    assert abs(high["kl"]) <= HIGH_KL_BOUND, high
    assert all(abs(r["kl"]) <= HIGH_KL_BOUND for r in metrics["ppo_high_kl"]), [r["kl"] for r in metrics["ppo_high_kl"]]


def test_the_curves_are_drawn(results):
    found, _, work = results
    assert (work / "ppo_align.png").stat().st_size > 10_000 and found["figure"].endswith("ppo_align.png")
