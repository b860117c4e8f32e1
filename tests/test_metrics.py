"""Where a training job's metrics go besides the console and --metrics-file (training/metrics.py):
tensorboard events and an offline wandb run."""

import subprocess
import sys

from conftest import REPO, quiet_env

FLAGS = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "3", "--lr", "1e-3", "--lr-warmup-iters", "2",
         "--eval-interval", "1000", "--log-interval", "1", "--seed", "7"]


def test_tensorboard_and_offline_wandb(tmp_path):
    env = quiet_env(WANDB_API_KEY="", HOME=str(tmp_path))  # no key, no ~/.netrc: offline
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_qwen.pretrain", *FLAGS, "--tensorboard-dir", str(tmp_path / "tb"),
         "--wandb-project", "megatron-qwen-test", "--wandb-save-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lm_loss")] == [1, 2, 3]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb did not write an offline run"
