"""torch's fused AdamW kernel (on by default on a GPU, forced here with --fused-adam) takes over a checkpoint
the default foreach kernel saved, and trains on as that kernel does."""

import json

from conftest import TRACKER, run_module

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


def test_fused_kernel_takes_over_a_foreach_checkpoint(tmp_path):
    """foreach for 5 iterations (saving every 2), then the fused kernel from its iteration 2: the saved param
    groups say foreach, this run's flag must win. The same fp32 update in another order stays within 1e-5
    of the foreach run (iteration 4 is the first loss after an update made from the loaded AdamW state);
    resuming without that state moves these losses by about 1e-3."""
    foreach, _ = pretrain(tmp_path, "foreach", "--save", str(tmp_path / "foreach"), "--save-interval", "2")
    (tmp_path / "foreach" / TRACKER).write_text("2")
    took_over, out = pretrain(tmp_path, "took_over", "--fused-adam", "--load", str(tmp_path / "foreach"))
    assert "AdamW kernel: fused" in out
    assert sorted(took_over) == [3, 4, 5]
    for it, got in took_over.items():
        assert abs(got - foreach[it]) <= 1e-5 * abs(foreach[it]), f"iteration {it}: {got} vs {foreach[it]}"
