"""Impossible configurations stop before any work with one clear line naming the flag."""

import pytest

from conftest import quiet_env, run_module

BASE = ["--mock-data", "--model-size", "tiny", "--train-iters", "1", "--seq-length", "32",
        "--micro-batch-size", "1", "--global-batch-size", "4"]

CASES = {
    "heads_not_divisible_by_tp": (3, ["--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size"),
    "layers_not_divisible_by_pp": (3, ["--pipeline-model-parallel-size", "3"], "--pipeline-model-parallel-size"),
    "layers_not_divisible_by_vp": (2, ["--pipeline-model-parallel-size", "2",
                                       "--num-layers-per-virtual-pipeline-stage", "3"],
                                   "--num-layers-per-virtual-pipeline-stage"),
    "batch_not_divisible": (2, ["--global-batch-size", "3"], "--global-batch-size"),
    "world_not_tp_pp_cp": (3, ["--tensor-model-parallel-size", "2"], "world size 3"),
    "seq_above_max_positions": (1, ["--seq-length", "1024"], "--max-position-embeddings"),
    "no_data": (1, [], "--data-path"),
    "bad_flag_value": (1, ["--micro-batch-size", "two"], "--micro-batch-size"),
    "unknown_model": (1, ["--model-size", "3b"], "--model-size"),
    "sp_without_tp": (1, ["--sequence-parallel"], "--sequence-parallel"),
    "context_parallel_without_te": (2, ["--context-parallel-size", "2"], "--context-parallel-size"),
    "warmup_past_horizon": (1, ["--lr-warmup-iters", "5"], "--lr-warmup-iters"),
    "finetune_without_load": (1, ["--finetune"], "--load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_clear_line(case, tmp_path):
    world, extra, needle = CASES[case]
    args = [a for a in BASE if not (case == "no_data" and a == "--mock-data")] + extra
    proc = run_module("megatron_qwen.pretrain", args, timeout=120,
                      env=quiet_env(WORLD_SIZE=str(world), RANK="0"))
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr[-2000:]
    assert needle in err[0]
    assert "Traceback" not in proc.stderr
