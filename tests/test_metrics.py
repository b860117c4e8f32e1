"""Where a training job's metrics go besides the console and --metrics-file (training/metrics.py):
tensorboard events and an offline wandb run."""

import json
import subprocess
import sys

from conftest import REPO, quiet_env

FLAGS = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "3", "--lr", "1e-3", "--lr-warmup-iters", "2",
         "--eval-interval", "1000", "--log-interval", "1", "--seed", "7"]


def offline_wandb_records(path) -> list:
    """The protobuf Records of an offline wandb run file (run-ID.wandb): a log of 32 KiB blocks, each record
    behind a 7-byte header (crc32, little-endian length, kind: 1 whole, 2 first, 3 middle, 4 last part), after
    the file's own 7-byte header. Read here because wandb 0.31 ships no Python reader of its own."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_tensorboard_and_offline_wandb(tmp_path):
    env = quiet_env(WANDB_API_KEY="", HOME=str(tmp_path))  # no key, no ~/.netrc: offline
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_qwen.pretrain", *FLAGS, "--tensorboard-dir", str(tmp_path / "tb"),
         "--wandb-project", "megatron-qwen-test", "--wandb-save-dir", str(tmp_path),
         "--metrics-file", str(tmp_path / "metrics.jsonl")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lm_loss")] == [1, 2, 3]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "wandb did not write one offline run"
    # What wandb received: each iteration's loss, LR and gradient norm at its step, as the metrics file has them,
    # and the run configuration.
    records = offline_wandb_records(runs[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(h["_step"], h["train/lm_loss"], h["train/lr"], h["train/grad_norm"]) for h in history] == \
        [(m["iteration"], m["lm_loss"], m["lr"], m["grad_norm"]) for m in metrics] and len(metrics) == 3
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["model"]["hidden_size"] == 64 and config["train"]["train_iters"] == 3
