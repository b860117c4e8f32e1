"""--train/valid/test-data-path with --multiple-validation-sets (training/datasets.py, training/loop.py): each
validation set evaluated on its own data and logged under its own name in the metrics JSONL and tensorboard,
the test set once at the end; a profiled run of the same job writes a trace that torch's profiler tools read
(training/profiling.py)."""

import json
import math

import numpy as np
import pytest
from conftest import run_module

from megatron_qwen.data.shards import IndexedShardWriter

VOCAB = 1024  # the tiny preset's


def write_shard(prefix, ids: np.ndarray, documents: int) -> str:
    with IndexedShardWriter(str(prefix)) as writer:
        writer.add_documents(ids.astype(np.int32), [len(ids) // documents] * documents)
    return str(prefix)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trained on a shard that repeats one token; validated on it ("repeat") and on uniform random ids
    ("random"), tested on the repeat shard."""
    tmp = tmp_path_factory.mktemp("validation_sets")
    repeat = write_shard(tmp / "repeat", np.full(4000, 7), 8)
    random = write_shard(tmp / "random", np.random.default_rng(0).integers(0, VOCAB, 4000), 8)
    metrics, tensorboard = tmp / "metrics.jsonl", tmp / "tb"
    proc = run_module("megatron_qwen.pretrain", [
        "--model-size", "tiny", "--tokenizer-type", "NullTokenizer", "--train-data-path", repeat,
        "--valid-data-path", repeat, random, "--multiple-validation-sets", "--validation-set-names", "repeat", "random",
        "--test-data-path", repeat, "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--train-iters", "8", "--eval-interval", "4", "--eval-iters", "2", "--lr", "1e-2", "--lr-warmup-iters", "1",
        "--metrics-file", str(metrics), "--tensorboard-dir", str(tensorboard), "--data-cache-path", str(tmp / "cache"),
        "--profile", "--profile-step-start", "2", "--profile-step-end", "4"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in open(metrics)], tensorboard, proc.stdout


def test_each_validation_set_is_logged_under_its_name_in_the_metrics_file(run):
    records, _, stdout = run
    evals = {(r["iteration"], k): v for r in records for k, v in r.items() if k.endswith("_loss") and k != "lm_loss"}
    assert set(evals) == {(4, "validation-repeat_loss"), (4, "validation-random_loss"),
                          (8, "validation-repeat_loss"), (8, "validation-random_loss"), (8, "test_loss")}
    # Each name holds its own data's loss: the repeated token is learnt, uniform random ids cannot be.
    assert evals[8, "validation-repeat_loss"] < math.log(VOCAB) - 2 < math.log(VOCAB) - 0.5 < \
        evals[8, "validation-random_loss"]
    assert evals[8, "test_loss"] == pytest.approx(evals[8, "validation-repeat_loss"], rel=1e-5)  # same shard
    assert " validation-random loss at iteration 8 |" in stdout


def test_each_validation_set_is_logged_under_its_name_in_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, tensorboard, _ = run
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"validation-repeat/lm_loss", "validation-random/lm_loss", "test/lm_loss"} <= scalars
    logged = {r["iteration"]: r["validation-random_loss"] for r in records if "validation-random_loss" in r}
    assert {e.step: e.value for e in events.Scalars("validation-random/lm_loss")} == pytest.approx(logged)


def test_profiled_steps_are_a_trace_torchs_profiler_plugin_reads(run):
    """The trace of steps 3 and 4 (--profile-step-start 2 to --profile-step-end 4) parsed by the PyTorch
    Profiler plugin of tensorboard (torch-tb-profiler), which finds both steps and the model's matmuls."""
    from torch_tb_profiler.profiler.data import RunProfileData

    _, tensorboard, _ = run
    (trace,) = tensorboard.glob("rank0.*.pt.trace.json")
    data = RunProfileData.parse("rank0", "", str(trace), None)
    data.process()
    data.analyze()
    assert len(data.steps_names) == 2, data.steps_names
    ops = {op.name for op in data.op_list_groupby_name}
    assert {"aten::mm", "aten::addmm"} & ops, sorted(ops)[:50]
