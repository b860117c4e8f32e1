"""A run's training, data, logging and checkpointing settings, each field with its flag (config/flags.py).

Every field needs a default: a checkpoint stores these (RunConfig.to_dict), and one written before a
field existed must still load (RunConfig.from_dict). The training and batch defaults are only what
library code gets (hf/load.py, inference/generate.py); a job's come from its recipe (config/recipes.py).
"""

from dataclasses import dataclass, field

from megatron_qwen.config.flags import CHECKPOINTING, DATA, LOGGING, TRAINING, flag
from megatron_qwen.config.optimizer import OptimizerSettings


@dataclass(frozen=True)
class TrainSettings:
    train_iters: int = flag("--train-iters", group=TRAINING, default=1000, recipe="train_iters",
                            help="optimizer steps")
    # Unset (None): the recipe's (parse_run_config), or a --deepspeed_config's.
    micro_batch_size: int = flag(
        "--micro-batch-size", group=TRAINING, default=1, unset=None,
        help=lambda r: f"sequences per forward pass on one data-parallel rank (recipe: {r.micro_batch_size})")
    global_batch_size: int = flag(
        "--global-batch-size", group=TRAINING, default=8, unset=None,
        help=lambda r: f"sequences per step (recipe: {r.global_batch_size}, or its per-size value)")
    seq_length: int = flag("--seq-length", group=TRAINING, default=2048, recipe="seq_length",
                           help="tokens per sequence")
    optim: OptimizerSettings = field(default_factory=OptimizerSettings)
    # Non-finite steps and loss spikes (training/anomalies.py).
    max_skipped_iterations: int | None = flag(
        "--max-skipped-iterations", group=TRAINING, default=10,
        help="stop after this many skipped updates in a row (non-finite loss or gradient norm); 0: never")
    loss_spike_factor: float | None = flag(
        "--loss-spike-factor", group=TRAINING, default=None,
        help="report a loss above this many times the mean of the last 20 losses")
    skip_loss_spikes: bool = flag("--skip-loss-spikes", group=TRAINING, default=False,
                                  help="with --loss-spike-factor: also skip the update")


TOKENIZER_TYPES = ("QwenTokenizer", "NullTokenizer")


@dataclass(frozen=True)
class DataSettings:
    data_format: str = "pretrain"  # the recipe's: "pretrain" or "chatml"
    mock_data: bool = flag("--mock-data", group=DATA, default=False,
                           help="megatron-core's synthetic GPT data, no files needed")
    data_path: tuple[str, ...] = flag("--data-path", group=DATA, default=(), to_field=tuple,
                                      help="shard prefixes, optionally weighted: --data-path 0.7 web 0.3 code")
    split: str = flag("--split", group=DATA, default="969,30,1", help="train,valid,test proportions")
    tokenizer_model: str | None = flag("--tokenizer-model", group=DATA, default=None,
                                       help="path to qwen.tiktoken (default: the fetched copy)")
    data_cache_path: str | None = flag("--data-cache-path", group=DATA, default=None)
    # Packed samples carry block-diagonal attention masks; back ends that run plain causal attention
    # (transformer-engine, flash-attn) pad each sample instead (parse_run_config).
    pack_sft: bool = flag("--no-pack-sft", group=DATA, default=True, dest="no_pack_sft", kind=bool, unset=False,
                          help="pad SFT samples instead of packing them (GPU back ends always pad)")
    num_workers: int = flag("--num-workers", group=DATA, default=0)
    # "NullTokenizer" (Megatron-LM's name): shards already hold ids below --vocab-size, no text is read.
    tokenizer_type: str = flag(
        "--tokenizer-type", group=DATA, default="QwenTokenizer", choices=TOKENIZER_TYPES,
        help="NullTokenizer: pretraining shards of ids for another vocabulary (--vocab-size), no tokenizer")


@dataclass(frozen=True)
class LogSettings:
    log_interval: int = flag("--log-interval", group=LOGGING, default=1)
    eval_interval: int = flag("--eval-interval", group=LOGGING, default=1000)
    eval_iters: int = flag("--eval-iters", group=LOGGING, default=10)
    metrics_file: str | None = flag("--metrics-file", group=LOGGING, default=None,
                                    help="append one JSON object per iteration")
    tensorboard_dir: str | None = flag("--tensorboard-dir", group=LOGGING, default=None)
    wandb_project: str | None = flag("--wandb-project", group=LOGGING, default=None,
                                     help="log to wandb (offline unless an API key is configured)")
    wandb_exp_name: str | None = flag("--wandb-exp-name", group=LOGGING, default=None)
    wandb_save_dir: str | None = flag("--wandb-save-dir", group=LOGGING, default=None)


@dataclass(frozen=True)
class CheckpointSettings:
    save: str | None = flag("--save", group=CHECKPOINTING, default=None)
    load: str | None = flag("--load", group=CHECKPOINTING, default=None)
    save_interval: int | None = flag("--save-interval", group=CHECKPOINTING, default=None)
    no_load_optim: bool = flag("--no-load-optim", group=CHECKPOINTING, default=False)
    no_load_rng: bool = flag("--no-load-rng", group=CHECKPOINTING, default=False)
    finetune: bool = flag("--finetune", group=CHECKPOINTING, default=False, recipe="finetune", negation="--no-finetune",
                          help="load weights only: fresh optimizer, iteration and data position")
    async_save: bool = flag("--async-save", group=CHECKPOINTING, default=False)
    override_data_state: bool = flag("--override-data-state", group=CHECKPOINTING, default=False,
                                     help="resume even if the global batch size or the data blend changed")
    exit_interval: int | None = flag("--exit-interval", group=CHECKPOINTING, default=None,
                                     help="save and stop every this many iterations")
    exit_signal_handler: bool = flag(
        "--exit-signal-handler", group=CHECKPOINTING, default=False,
        help="on SIGTERM (preemption, time limit) save a checkpoint at the next iteration and exit")
    exit_duration_in_mins: float | None = flag(
        "--exit-duration-in-mins", group=CHECKPOINTING, default=None,
        help="save and exit 0 at the first iteration boundary this many minutes after start")
    keep_last_checkpoints: int | None = flag(
        "--keep-last-checkpoints", group=CHECKPOINTING, default=None,
        help="delete older checkpoints once a new one is complete, keeping this many (default: all)")
    load_fallback: bool = flag("--load-fallback", group=CHECKPOINTING, default=False,
                               help="if the latest checkpoint under --load is damaged, load the newest whole older one")
    no_verify_checksums: bool = flag(
        "--no-verify-checksums", group=CHECKPOINTING, default=False,
        help="--load: skip verifying the checksums of the checkpoint's tensor files (the job reads them once "
             "more, shared among its ranks; docs/reliability.md gives the cost)")
