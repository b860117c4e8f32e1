"""torch's fused AdamW kernel (on by default on a GPU, forced here with --fused-adam) trains as the default
foreach kernel does, takes over a foreach checkpoint, and its own checkpoints resume."""

import json

from conftest import run_module

RUN = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
       "--global-batch-size", "4", "--train-iters", "5", "--lr", "1e-3", "--lr-warmup-iters", "1",
       "--eval-interval", "1000", "--seed", "7"]


def pretrain(tmp, name: str, *extra: str) -> tuple[dict[int, float], str]:
    """The run's losses by iteration, and its output."""
    metrics = tmp / f"{name}.jsonl"
    proc = run_module("megatron_qwen.pretrain", [*RUN, "--metrics-file", str(metrics), *extra], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(metrics)]
    return {r["iteration"]: r["lm_loss"] for r in rows if "lm_loss" in r}, proc.stdout


def test_fused_kernel_takes_over_a_foreach_checkpoint_and_resumes_its_own(tmp_path):
    """foreach for 5 iterations (saving every 2); fused from its iteration 2 to 3, saving; fused from that
    to 5 (iteration 5's loss is the first to show the update made from the fused checkpoint's state). The
    same fp32 update in another order stays within 1e-5 of the foreach run; losing the AdamW state on a
    resume moves these losses by about 1e-3."""
    foreach, _ = pretrain(tmp_path, "foreach", "--save", str(tmp_path / "foreach"), "--save-interval", "2")
    (tmp_path / "foreach" / "latest_checkpointed_iteration.txt").write_text("2")
    # The checkpoint's param groups say foreach: this run's flag must win.
    took_over, out = pretrain(tmp_path, "took_over", "--fused-adam", "--load", str(tmp_path / "foreach"),
                              "--save", str(tmp_path / "fused"), "--exit-interval", "3")
    assert "AdamW kernel: fused" in out
    resumed, out = pretrain(tmp_path, "resumed", "--fused-adam", "--load", str(tmp_path / "fused"))
    assert "AdamW kernel: fused" in out
    assert sorted(took_over) == [3] and sorted(resumed) == [4, 5]
    for it, got in {**took_over, **resumed}.items():
        assert abs(got - foreach[it]) <= 1e-5 * abs(foreach[it]), f"iteration {it}: {got} vs {foreach[it]}"
