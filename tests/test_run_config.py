"""The run configuration built from its dataclasses' flag declarations (config/flags.py): every flag of
the hand-written parser it replaced, and checkpoints' stored configurations in older layouts."""

from megatron_qwen.config.recipes import PRETRAIN, PRETRAIN_CODE, RECIPES
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.arguments import build_parser, parse_run_config

# Every option string of the hand-written parser (config/arguments.py before the flags moved onto the
# dataclasses), copied from its parser's actions.
HAND_WRITTEN_FLAGS = {
    "--adam-beta1", "--adam-beta2", "--adam-eps", "--allow-unpublished-tokenizer", "--async-save",
    "--attention-dropout", "--bf16", "--clip-grad",
    "--compile-layers", "--context-parallel-size", "--data-cache-path", "--data-path", "--deepspeed",
    "--deepspeed-config", "--deepspeed_config", "--distributed-timeout-minutes", "--eval-interval", "--eval-iters",
    "--exit-duration-in-mins", "--exit-interval", "--exit-signal-handler", "--ffn-hidden-size", "--finetune",
    "--fused-adam", "--global-batch-size", "--help", "--hidden-dropout", "--hidden-size", "--keep-last-checkpoints",
    "--kv-channels", "--load", "--load-fallback", "--log-interval", "--loss-spike-factor", "--lr", "--lr-decay-iters",
    "--lr-decay-style", "--lr-warmup-fraction", "--lr-warmup-init", "--lr-warmup-iters",
    "--make-vocab-size-divisible-by", "--max-position-embeddings", "--max-skipped-iterations", "--metrics-file",
    "--micro-batch-size", "--min-lr", "--mock-data", "--model-size", "--no-bias-dropout-fusion",
    "--no-bias-swiglu-fusion", "--no-cross-entropy-fusion", "--no-finetune", "--no-fused-adam",
    "--no-gradient-accumulation-fusion", "--no-load-optim", "--no-load-rng", "--no-masked-softmax-fusion",
    "--no-pack-sft", "--no-pipeline-parallel", "--no-rmsnorm-fusion", "--no-rope-fusion", "--no-verify-checksums",
    "--norm-epsilon",
    "--num-attention-heads", "--num-layers", "--num-layers-per-virtual-pipeline-stage", "--num-workers",
    "--overlap-grad-reduce", "--overlap-param-gather", "--override-data-state", "--pipeline-model-parallel-size",
    "--recompute-granularity", "--recompute-num-layers", "--rotary-base", "--save", "--save-interval", "--seed",
    "--seq-length", "--sequence-parallel", "--skip-loss-spikes", "--split", "--tensor-model-parallel-size",
    "--tensorboard-dir", "--tokenizer-model", "--tokenizer-type", "--train-iters", "--transformer-impl",
    "--use-cpu-initialization", "--use-distributed-optimizer", "--use-torch-adamw", "--vocab-size",
    "--wandb-exp-name", "--wandb-project", "--wandb-save-dir", "--weight-decay", "--zero-bucket-size",
    "--zero-engine", "--zero-offload-optimizer", "--zero-offload-param", "--zero-stage", "-h",
}

# RunConfig.to_dict() of `--mock-data --model-size tiny --compile-layers --transformer-impl local` before
# compile_layers moved from the training settings to the build settings, written out by hand.
BEFORE_FUSIONS_MOVED = {
    "recipe": "pretrain", "model_size": "tiny",
    "model": {"hidden_size": 64, "num_layers": 4, "num_attention_heads": 4, "ffn_hidden_size": 176,
              "vocab_size": 1024, "padded_vocab_size": 1024, "kv_channels": None, "max_position_embeddings": 512,
              "seq_length": 512, "rotary_base": 10000, "norm_epsilon": 1e-06, "init_method_std": 0.02},
    "build": {"transformer_impl": "local", "precision": "fp32", "hidden_dropout": 0.0, "attention_dropout": 0.0,
              "recompute_granularity": None, "recompute_num_layers": 1, "seed": 1234, "cpu_initialization": False,
              "bias_swiglu_fusion": True, "bias_dropout_fusion": True, "masked_softmax_fusion": True,
              "rope_fusion": True, "gradient_accumulation_fusion": True, "rmsnorm_fusion": True,
              "cross_entropy_fusion": True},
    "parallel": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                 "num_layers_per_virtual_pipeline_stage": None, "context_parallel_size": 1,
                 "sequence_parallel": False, "overlap_grad_reduce": False, "overlap_param_gather": False,
                 "distributed_timeout_minutes": 30},
    "train": {"train_iters": 1000, "micro_batch_size": 1, "global_batch_size": 8, "seq_length": 2048,
              "optim": {"lr": 0.0003, "min_lr": 2.9999999999999997e-05, "weight_decay": 0.1, "adam_beta1": 0.9,
                        "adam_beta2": 0.95, "adam_eps": 1e-08, "clip_grad": 1.0, "lr_warmup_iters": 999,
                        "lr_warmup_init": 0.0, "lr_decay_iters": None, "lr_decay_style": "cosine",
                        "fused_adam": None},
              "max_skipped_iterations": 10, "loss_spike_factor": None, "skip_loss_spikes": False,
              "compile_layers": True},
    "data": {"data_format": "pretrain", "mock_data": True, "data_path": [], "split": "969,30,1",
             "tokenizer_model": None, "data_cache_path": None, "pack_sft": True, "num_workers": 0,
             "tokenizer_type": "QwenTokenizer"},
    "log": {"log_interval": 1, "eval_interval": 1000, "eval_iters": 10, "metrics_file": None,
            "tensorboard_dir": None, "wandb_project": None, "wandb_exp_name": None, "wandb_save_dir": None},
    "checkpoint": {"save": None, "load": None, "save_interval": None, "no_load_optim": False, "no_load_rng": False,
                   "finetune": False, "async_save": False, "override_data_state": False, "exit_interval": None,
                   "exit_signal_handler": False, "exit_duration_in_mins": None, "keep_last_checkpoints": None,
                   "load_fallback": False},
    "zero": {"engine": "megatron", "stage": 0, "offload_optimizer": "none", "offload_param": "none",
             "bucket_size": 40000000, "deepspeed_config": None, "torch_adamw": False},
}


def test_every_hand_written_flag_is_still_parsed():
    for recipe in RECIPES.values():
        parser = build_parser(recipe)
        assert HAND_WRITTEN_FLAGS <= {s for a in parser._actions for s in a.option_strings}, recipe.name
        dests = [a.dest for a in parser._actions if a.option_strings[0] not in ("--no-finetune", "--no-fused-adam")]
        assert len(dests) == len(set(dests))  # no two flags write one name (the namespace is flat)


def test_config_stored_before_the_fusions_moved_loads():
    stored = RunConfig.from_dict(BEFORE_FUSIONS_MOVED)
    assert stored.build.compile_layers and not hasattr(stored.train, "compile_layers")
    assert stored == parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--compile-layers",
                                                 "--transformer-impl", "local"])
    assert RunConfig.from_dict(stored.to_dict()) == stored


def test_help_of_every_recipe_states_its_values():
    """A warmup stated as a percentage (pretrain_code's 3%) used to break argparse's %-formatting."""
    help_text = " ".join(build_parser(PRETRAIN_CODE).format_help().split())
    assert "linear warmup (recipe: 3% of --train-iters)" in help_text
    assert "--finetune load weights only: fresh optimizer, iteration and data position (default: True)" in help_text
