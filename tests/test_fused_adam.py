"""torch's fused AdamW kernel (on by default on a GPU, forced here with --fused-adam): the same training
as the default foreach kernel, and a checkpoint resumes exactly with it, also one the other kernel saved."""

import json

import pytest
from conftest import run_module

RUN = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
       "--global-batch-size", "4", "--train-iters", "6", "--lr", "1e-3", "--lr-warmup-iters", "2",
       "--eval-interval", "1000", "--seed", "7"]


def pretrain(tmp, name: str, *extra: str) -> tuple[dict[int, float], str]:
    """The run's losses by iteration, and its output."""
    metrics = tmp / f"{name}.jsonl"
    proc = run_module("megatron_qwen.pretrain", [*RUN, "--metrics-file", str(metrics), *extra], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(metrics)]
    return {r["iteration"]: r["lm_loss"] for r in rows if "lm_loss" in r}, proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The foreach kernel uninterrupted (saving at 3 and 6), and the fused kernel stopped at 3 and resumed."""
    tmp = tmp_path_factory.mktemp("fused_adam")
    foreach, _ = pretrain(tmp, "foreach", "--save", str(tmp / "foreach_ckpt"), "--save-interval", "3")
    fused, _ = pretrain(tmp, "fused", "--fused-adam", "--save", str(tmp / "fused_ckpt"), "--exit-interval", "3")
    resumed, out = pretrain(tmp, "resumed", "--fused-adam", "--load", str(tmp / "fused_ckpt"))
    assert "AdamW kernel: fused" in out
    return tmp, foreach, fused, resumed


def assert_close(got: dict, want: dict, iterations):
    """The same fp32 update in another order stays within 1e-5; a resume that loses the AdamW state does not."""
    for it in iterations:
        assert abs(got[it] - want[it]) <= 1e-5 * abs(want[it]), f"iteration {it}: {got[it]} vs {want[it]}"


def test_fused_kernel_trains_and_resumes_as_the_foreach_kernel(runs):
    _, foreach, fused, resumed = runs
    assert sorted(fused) == [1, 2, 3] and sorted(resumed) == [4, 5, 6]
    assert_close({**fused, **resumed}, foreach, range(1, 7))


def test_foreach_checkpoint_resumes_with_the_fused_kernel(runs):
    """The checkpoint's param groups say foreach: this run's flag wins, and the step counters move to the
    fused kernel's device."""
    tmp, foreach, _, _ = runs
    (tmp / "foreach_ckpt" / "latest_checkpointed_iteration.txt").write_text("3")  # it also saved at 6
    switched, out = pretrain(tmp, "switched", "--fused-adam", "--load", str(tmp / "foreach_ckpt"))
    assert "AdamW kernel: fused" in out
    assert sorted(switched) == [4, 5, 6]
    assert_close(switched, foreach, (4, 5, 6))
