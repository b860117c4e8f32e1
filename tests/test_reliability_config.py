"""A table of invalid flag combinations: each is refused with one line naming the flag or file and the
rule, exit code 2, before any process group exists. In-process (entry.main, as every launcher runs
it), so the whole table costs about a second; tests/test_config_errors.py runs a few as real processes."""

import json

import pytest
import torch.distributed as dist
from conftest import TRACKER

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.entry import main

BASE = ["--mock-data", "--model-size", "tiny", "--train-iters", "4", "--seq-length", "32",
        "--micro-batch-size", "1", "--global-batch-size", "4"]

# name: (world size, extra flags, text the one line must contain); "{tmp}" is the test's directory.
CASES = {
    "world_not_tp_pp_cp": (3, ["--tensor-model-parallel-size", "2"], "world size 3 is not a multiple"),
    "tp_zero": (1, ["--tensor-model-parallel-size", "0"], "must be at least 1"),
    "heads_not_divisible_by_tp": (3, ["--tensor-model-parallel-size", "3"], "attention heads"),
    "padded_vocab_not_divisible_by_tp": (2, ["--tensor-model-parallel-size", "2", "--vocab-size", "1001",
                                             "--make-vocab-size-divisible-by", "1"], "padded vocabulary"),
    "layers_not_divisible_by_pp": (3, ["--pipeline-model-parallel-size", "3"], "does not divide the 4 layers"),
    "vp_without_pp": (1, ["--num-layers-per-virtual-pipeline-stage", "1"], "--pipeline-model-parallel-size"),
    "layers_not_divisible_by_pp_x_vp": (2, ["--pipeline-model-parallel-size", "2",
                                            "--num-layers-per-virtual-pipeline-stage", "3"],
                                        "--num-layers-per-virtual-pipeline-stage 3"),
    "batch_not_divisible_by_micro_x_dp": (2, ["--global-batch-size", "3"], "--global-batch-size 3"),
    "sequence_parallel_without_tp": (1, ["--sequence-parallel"], "--sequence-parallel needs"),
    "sequence_parallel_seq_not_divisible": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                                "--seq-length", "33"], "--seq-length divisible"),
    "context_parallel_without_te": (2, ["--context-parallel-size", "2"], "transformer-engine"),
    "context_parallel_seq_not_divisible": (2, ["--context-parallel-size", "2", "--seq-length", "34"],
                                           "2 x --context-parallel-size"),
    "hidden_not_divisible_by_heads": (1, ["--hidden-size", "66"], "--kv-channels"),
    "vocab_rounding_zero": (1, ["--vocab-size", "1000", "--make-vocab-size-divisible-by", "0"],
                            "--make-vocab-size-divisible-by"),
    "seq_above_max_positions": (1, ["--seq-length", "1024"], "--max-position-embeddings"),
    "no_training_data": (1, ["--no-mock"], "--data-path"),
    "train_iters_zero": (1, ["--train-iters", "0"], "--train-iters"),
    "warmup_past_horizon": (1, ["--lr-warmup-iters", "5"], "--lr-warmup-iters"),
    "warmup_fraction_whole_run": (1, ["--lr-warmup-fraction", "1.0"], "--lr-warmup-fraction"),
    "min_lr_above_lr": (1, ["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr 0.001 is above the peak LR 0.0001"),
    "finetune_without_load": (1, ["--finetune"], "--load"),
    "keep_last_zero": (1, ["--keep-last-checkpoints", "0"], "--keep-last-checkpoints"),
    "not_a_number": (1, ["--micro-batch-size", "two"], "--micro-batch-size"),
    "unknown_choice": (1, ["--lr-decay-style", "exponential"], "--lr-decay-style"),
    "unknown_model_size": (1, ["--model-size", "3b"], "--model-size"),
    "zero3_on_megatron_engine": (1, ["--zero-stage", "3"], "--zero-engine deepspeed"),
    "deepspeed_with_pipeline": (2, ["--zero-engine", "deepspeed", "--pipeline-model-parallel-size", "2"],
                                "--pipeline-model-parallel-size 2"),
    "distributed_optimizer_vs_stage0": (1, ["--zero-stage", "0", "--use-distributed-optimizer"], "--zero-stage 0"),
    "save_is_a_file": (1, ["--save", "{tmp}/a_file"], "is a file"),
    "load_is_a_file": (1, ["--load", "{tmp}/a_file"], "is a file"),
    "load_mistyped": (1, ["--load", "{tmp}/chekpoints", "--save", "{tmp}/checkpoints"], "does not exist"),
    "load_tracker_garbage": (1, ["--load", "{tmp}/garbage"], "expected an iteration number"),
    "load_tracker_names_missing_iteration": (1, ["--load", "{tmp}/dangling"], "iter_0000007 is missing"),
    "skip_spikes_on_deepspeed": (1, ["--zero-engine", "deepspeed", "--loss-spike-factor", "3", "--skip-loss-spikes"],
                                 "--skip-loss-spikes needs --zero-engine megatron"),
    "compile_layers_on_deepspeed": (1, ["--zero-engine", "deepspeed", "--compile-layers"], "--compile-layers"),
    "compile_layers_on_transformer_engine": (1, ["--transformer-impl", "transformer_engine", "--compile-layers"],
                                             "--compile-layers"),
    "deepspeed_checkpoint_of_another_shape": (1, ["--zero-engine", "deepspeed", "--load", "{tmp}/ds_wide"],
                                              "hidden size 128 saved, 64 asked (--hidden-size)"),
    # Megatron-DeepSpeed's command line and DeepSpeed JSONs (tests/test_deepspeed_config.py: what is accepted).
    "deepspeed_vs_megatron_engine": (1, ["--deepspeed", "--zero-engine", "megatron"], "--deepspeed contradicts"),
    "torch_adamw_without_deepspeed": (1, ["--use-torch-adamw"], "--use-torch-adamw chooses the DeepSpeed engine"),
    "deepspeed_config_without_deepspeed": (1, ["--deepspeed_config", "{tmp}/ds_adamw.json"], "needs --deepspeed"),
    "no_pipeline_parallel_with_pp": (2, ["--no-pipeline-parallel", "--pipeline-model-parallel-size", "2"],
                                     "--no-pipeline-parallel contradicts"),
    "ds_fp16": (1, ["--deepspeed", "--deepspeed_config", "{tmp}/ds_fp16.json"], "fp16.enabled = true"),
    "ds_optimizer_lamb": (1, ["--deepspeed", "--deepspeed_config", "{tmp}/ds_lamb.json"], "optimizer.type 'Lamb'"),
    "ds_lr_vs_flag": (1, ["--deepspeed", "--deepspeed_config", "{tmp}/ds_adamw.json", "--lr", "0.1"],
                      "--lr 0.1 contradicts optimizer.params.lr = 0.0002"),
    "ds_scheduler_one_cycle": (1, ["--deepspeed", "--deepspeed_config", "{tmp}/ds_one_cycle.json"],
                               "scheduler.type 'OneCycle'"),
    "ds_scheduler_log_warmup": (1, ["--deepspeed", "--deepspeed_config", "{tmp}/ds_log_warmup.json"],
                                "scheduler.params.warmup_type 'log'"),
}

# DeepSpeed JSONs for the cases above, by file name.
DS_JSONS = {
    "ds_adamw": {"optimizer": {"type": "AdamW", "params": {"lr": 2e-4}}},
    "ds_fp16": {"fp16": {"enabled": True, "loss_scale": 0}},
    "ds_lamb": {"optimizer": {"type": "Lamb", "params": {"lr": 2e-4}}},
    "ds_one_cycle": {"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4}}},
    "ds_log_warmup": {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}}},
}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for name, text in (("garbage", "seven"), ("dangling", "7")):
        (tmp_path / name).mkdir()
        (tmp_path / name / TRACKER).write_text(text)
    # A deepspeed-engine checkpoint keeps our run config in deepspeed.json beside DeepSpeed's files.
    wide = parse_run_config(PRETRAIN, [*BASE, "--hidden-size", "128"])
    (tmp_path / "ds_wide" / "iter_0000002").mkdir(parents=True)
    (tmp_path / "ds_wide" / "iter_0000002" / "deepspeed.json").write_text(json.dumps({"run_config": wide.to_dict()}))
    (tmp_path / "ds_wide" / TRACKER).write_text("2")
    for name, config in DS_JSONS.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_flags_are_one_line_exit_2_before_any_process_group(case, files, monkeypatch, capsys):
    world, extra, needle = CASES[case]
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    args = [a for a in BASE if not (extra == ["--no-mock"] and a == "--mock-data")]
    args += [a.replace("{tmp}", str(files)) for a in extra if a != "--no-mock"]
    with pytest.raises(SystemExit) as exit_:
        main(PRETRAIN, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    assert not dist.is_initialized()
