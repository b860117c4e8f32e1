"""Impossible configurations stop before any work with one clear line naming the flag."""

import pytest
from conftest import quiet_env, run_module

BASE = ["--mock-data", "--model-size", "tiny", "--train-iters", "1", "--seq-length", "32",
        "--micro-batch-size", "1", "--global-batch-size", "4"]

# A few cases as real processes (the whole table runs in-process in test_reliability_config.py):
# a layout rule, an argparse error, a declared range (--seq-length 0 was a SIGFPE) and a data rule, each one
# line on a real stderr.
CASES = {
    "world_not_tp_pp_cp": (3, ["--tensor-model-parallel-size", "2"], "world size 3"),
    "bad_flag_value": (1, ["--micro-batch-size", "two"], "--micro-batch-size"),
    "seq_length_zero": (1, ["--seq-length", "0"], "--seq-length"),
    "no_data": (1, [], "--data-path"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_clear_line(case, tmp_path):
    world, extra, needle = CASES[case]
    args = [a for a in BASE if not (case == "no_data" and a == "--mock-data")] + extra
    proc = run_module("megatron_qwen.pretrain", args, timeout=120,
                      env=quiet_env(WORLD_SIZE=str(world), RANK="0"))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr[-2000:]
    assert needle in err[0]
    assert "Traceback" not in proc.stderr


# --- checks on files, made before any process group exists -------------------------------------
# The environment below is a torchrun rank 0 of a 2-process job whose peer never comes: creating
# a process group would block until the timeout, so a prompt exit proves none was created.

def _lone_rank_env():
    from conftest import free_port

    return quiet_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def _write_shard(prefix, documents):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for doc in documents:
        builder.add_document(np.array(doc, dtype=np.int32), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def _run_before_any_work(args, tmp_path):
    base = ["--model-size", "tiny-qwen-vocab", "--num-layers", "2", "--train-iters", "1", "--seq-length", "32",
            "--micro-batch-size", "1", "--global-batch-size", "2"]
    proc = run_module("megatron_qwen.pretrain", base + args, timeout=60, env=_lone_rank_env())
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr[-2000:]
    assert "megatron-qwen pretrain:" not in proc.stdout  # the banner printed once groups exist
    return err[0]


def test_missing_shard_is_found_before_any_work(tmp_path):
    prefix = str(tmp_path / "nowhere_text_document")
    line = _run_before_any_work(["--data-path", prefix], tmp_path)
    assert line == (f"error: --data-path {prefix}: {prefix}.idx not found; create the dataset with "
                    "tools/preprocess_data.py (pass its prefix, without .bin/.idx)")


def test_empty_shard_is_found_before_any_work(tmp_path):
    good = _write_shard(tmp_path / "good", [[1, 2, 3, 4]] * 8)
    empty = _write_shard(tmp_path / "shard", [])
    line = _run_before_any_work(["--data-path", good, empty], tmp_path)
    assert line == (f"error: --data-path {empty} holds no documents (an empty shard, e.g. a byte range inside one "
                    "long line, or a file of bad records); leave it out of --data-path")


def test_unreadable_index_is_found_before_any_work(tmp_path):
    prefix = _write_shard(tmp_path / "bad", [[1, 2, 3]] * 4)
    with open(f"{prefix}.idx", "r+b") as f:
        f.write(b"NOTANIDX")
    line = _run_before_any_work(["--data-path", prefix], tmp_path)
    assert line == (f"error: --data-path {prefix}: {prefix}.idx: not a Megatron index (magic b'NOTANIDX\\x00', "
                    "expected b'MMIDIDX\\x00\\x00'); rerun tools/preprocess_data.py for it")


def test_tokenizer_larger_than_model_vocabulary_is_found_before_any_work(tmp_path):
    good = _write_shard(tmp_path / "good", [[1, 2, 3, 4]] * 8)
    line = _run_before_any_work(["--data-path", good, "--vocab-size", "1000"], tmp_path)
    assert "--vocab-size" in line and "151851" in line


def test_mistyped_load_directory_is_refused_before_any_work(tmp_path):
    line = _run_before_any_work(["--mock-data", "--load", str(tmp_path / "chekpoints"),
                                 "--save", str(tmp_path / "checkpoints")], tmp_path)
    assert "--load" in line and "chekpoints" in line and "does not exist" in line
