"""Non-finite losses skip the update and name the data-parallel rank; a streak of them stops the run;
loss spikes are told apart from noise (training/anomalies.py)."""

import math

import pytest
import torch
from fault_harness import metrics, run_harness

COMMON = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
          "--global-batch-size", "8", "--lr", "1e-3", "--lr-warmup-iters", "2", "--seed", "7",
          "--hidden-dropout", "0", "--attention-dropout", "0", "--eval-interval", "1000"]
BAD_ITERATION, GBS = 4, 8


def skip_batch_in_checkpoint(ckpt_dir: str) -> None:
    """Make the checkpoint of the run that stopped before BAD_ITERATION resume after it, as if that
    batch had been read and its update never applied: data position advanced, LR schedule not."""
    from megatron_qwen.checkpointing.directory import iteration_dir, latest_iteration
    from megatron_qwen.checkpointing.integrity import write_manifest

    path = iteration_dir(ckpt_dir, latest_iteration(ckpt_dir))
    common = torch.load(f"{path}/common.pt", weights_only=False)
    common["train_state"].update(iteration=BAD_ITERATION, consumed_samples=BAD_ITERATION * GBS)
    torch.save(common, f"{path}/common.pt")
    write_manifest(path)  # the edit is deliberate


def test_nan_in_one_microbatch_skips_that_update_only(tmp_path):
    """A NaN in one micro-batch of DP rank 1 at iteration 4: the step is skipped and reported, and the
    later losses equal those of a run whose checkpoint was edited to jump over that batch."""
    ckpt = str(tmp_path / "ckpt")
    jobs = [
        {"name": "nan", "nproc": 2, "nan_loss": {"iterations": [BAD_ITERATION], "dp_rank": 1},
         "argv": [*COMMON, "--train-iters", "7", "--metrics-file", str(tmp_path / "nan.jsonl")]},
        {"name": "before", "nproc": 2, "argv": [*COMMON, "--train-iters", "7", "--save", ckpt,
                                                "--exit-interval", str(BAD_ITERATION - 1)]},
        {"name": "edit", "call": "test_reliability_nan:skip_batch_in_checkpoint", "args": [ckpt]},
        {"name": "after", "nproc": 2, "argv": [*COMMON, "--train-iters", "7", "--load", ckpt,
                                               "--metrics-file", str(tmp_path / "after.jsonl")]},
        {"name": "streak", "nproc": 1, "nan_loss": {"iterations": [2, 3, 4], "dp_rank": 0},
         "argv": [*COMMON, "--train-iters", "6", "--max-skipped-iterations", "3"]},
    ]
    results = run_harness(jobs, tmp_path)
    nan = results["nan"][0]
    assert nan["codes"] == [0, 0], nan["output"][-3000:]
    assert f"iteration {BAD_ITERATION}: non-finite loss on data-parallel rank(s) 1: update skipped" in nan["output"]
    got, ref = metrics(tmp_path / "nan.jsonl"), metrics(tmp_path / "after.jsonl")
    assert math.isnan(got[BAD_ITERATION]["lm_loss"])
    assert got[7]["skipped_iterations"] == 1 and got[7]["consumed_samples"] == 7 * GBS
    assert sorted(ref) == [5, 6, 7]
    for it in ref:  # same weights, optimizer state and LR after the skipped step
        assert abs(got[it]["lm_loss"] - ref[it]["lm_loss"]) <= 1e-6 * ref[it]["lm_loss"], it
        assert got[it]["lr"] == pytest.approx(ref[it]["lr"], rel=1e-9)

    streak = results["streak"][0]
    assert streak["codes"] == [1]
    errors = [line for line in streak["output"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "3 iterations in a row skipped (up to iteration 4)" in errors[0]
    assert "--max-skipped-iterations" in errors[0] and "Traceback" not in streak["output"]


def test_spike_detector_flags_outliers_only():
    from megatron_qwen.config.optimizer import OptimizerSettings
    from megatron_qwen.config.settings import TrainSettings
    from megatron_qwen.training.anomalies import StepHealth

    health = StepHealth(TrainSettings(1, 1, 1, 1, OptimizerSettings(), loss_spike_factor=2.0))
    losses = [3.0 + 0.1 * math.sin(i) for i in range(20)]
    assert not any(health._is_spike(x) for x in losses)  # filling the window: never a spike
    mean = sum(losses) / 20
    assert health._is_spike(2.01 * mean) and not health._is_spike(1.99 * mean)
    assert not health._is_spike(float("nan"))  # non-finite losses are the other check's



def test_judge_returns_a_verdict_that_record_reports(single_process, capsys):
    """judge() keeps nothing for record(): each step's verdict is returned and handed over, so a step judged
    but never recorded cannot leak into the next report."""
    from megatron_qwen.config.optimizer import OptimizerSettings
    from megatron_qwen.config.settings import TrainSettings
    from megatron_qwen.training.anomalies import StepHealth, TrainingHalted, Verdict

    health = StepHealth(TrainSettings(1, 1, 1, 1, OptimizerSettings(), max_skipped_iterations=3))
    bad = health.judge(torch.tensor([float("nan"), 4.0]), float("nan"))
    assert bad == Verdict(bad_dp_ranks=(0,), spike=False, skip=True)
    assert health.judge(torch.tensor([1.0, 4.0]), 0.25) == Verdict()  # judged, never recorded
    health.record(1, None, False, bad)
    assert "iteration 1: non-finite loss on data-parallel rank(s) 0: update skipped" in capsys.readouterr().out
    health.record(2, float("inf"), False, Verdict())
    out = capsys.readouterr().out
    assert "iteration 2: non-finite gradient norm (inf)" in out and "data-parallel rank(s)" not in out
    with pytest.raises(TrainingHalted, match="3 iterations in a row skipped"):
        health.record(3, None, False, bad)
