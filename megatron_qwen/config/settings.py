"""A run's training, data, logging and checkpointing settings, each field with its flag (config/flags.py).

Every field needs a default: a checkpoint stores these (RunConfig.to_dict), and one written before a
field existed must still load (RunConfig.from_dict). The training and batch defaults are only what
library code gets (hf/load.py, inference/generate.py); a job's come from its recipe (config/recipes.py).
"""

import os
import re
from dataclasses import dataclass, field

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import CHECKPOINTING, DATA, LOGGING, NON_NEGATIVE, POSITIVE, TRAINING, flag
from megatron_qwen.config.optimizer import OptimizerSettings


@dataclass(frozen=True)
class TrainSettings:
    # The run's length in steps; a budget given in samples or tokens resolves into it and into train_samples
    # (config/budget.py). Unset (None): the recipe's steps, or one epoch of the training split for a recipe
    # without a step count (training/arguments.py). At most one of the three budget flags.
    train_iters: int = flag("--train-iters", group=TRAINING, default=1000, unset=None, bounds=POSITIVE,
                            excludes=("--train-samples", "--train-tokens"),
                            help=lambda r: "optimizer steps (recipe: "
                                           + (f"{r.train_iters}" if r.train_iters is not None else
                                              "one epoch of the training split")
                                           + "); or --train-samples, --train-tokens")
    train_samples: int | None = flag(
        "--train-samples", group=TRAINING, default=None, bounds=POSITIVE, excludes=("--train-tokens",),
        help="budget in samples: --train-samples / --global-batch-size steps, the LR schedule counted in samples")
    # Unset (None): the recipe's (parse_run_config), or a --deepspeed_config's.
    micro_batch_size: int = flag(
        "--micro-batch-size", group=TRAINING, default=1, unset=None, bounds=POSITIVE,
        help=lambda r: f"sequences per forward pass on one data-parallel rank (recipe: {r.micro_batch_size})")
    global_batch_size: int = flag(
        "--global-batch-size", group=TRAINING, default=8, unset=None, bounds=POSITIVE,
        help=lambda r: f"sequences per step (recipe: {r.global_batch_size}, or its per-size value)")
    seq_length: int = flag("--seq-length", group=TRAINING, default=2048, recipe="seq_length",
                           bounds=POSITIVE, help="tokens per sequence")
    optim: OptimizerSettings = field(default_factory=OptimizerSettings)
    # Non-finite steps and loss spikes (training/anomalies.py).
    max_skipped_iterations: int | None = flag(
        "--max-skipped-iterations", group=TRAINING, default=10, bounds=NON_NEGATIVE,
        help="stop after this many skipped updates in a row (non-finite loss or gradient norm); 0: never")
    loss_spike_factor: float | None = flag(
        "--loss-spike-factor", group=TRAINING, default=None, bounds=POSITIVE,
        help="report a loss above this many times the mean of the last 20 losses")
    skip_loss_spikes: bool = flag("--skip-loss-spikes", group=TRAINING, default=False, needs=("--loss-spike-factor",),
                                  help="with --loss-spike-factor: also skip the update")


TOKENIZER_TYPES = ("QwenTokenizer", "NullTokenizer")
EXIT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


def _ranks(values) -> tuple[int, ...]:
    """--profile-ranks 0 8: global ranks, whole numbers from 0."""
    if not all(re.fullmatch(r"[0-9]+", str(v)) for v in values):
        raise ConfigError(f"--profile-ranks {' '.join(map(str, values))}: give global ranks, e.g. 0 8")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class DataSettings:
    data_format: str = "pretrain"  # the recipe's: "pretrain", "chatml", "pairs" or "prompts" (PPO; no data needed)
    mock_data: bool = flag("--mock-data", group=DATA, default=False, excludes=("--data-path", "--train-data-path"),
                           help="megatron-core's synthetic GPT data, no files needed")
    data_path: tuple[str, ...] = flag("--data-path", group=DATA, default=(), to_field=tuple,
                                      excludes=("--train-data-path",),
                                      help="shard prefixes, optionally weighted: --data-path 0.7 web 0.3 code")
    split: str = flag("--split", group=DATA, default="969,30,1", help="train,valid,test proportions")
    # Each split from its own shards instead of --data-path and --split (Megatron-LM's flags; same forms as
    # --data-path). The test sets are evaluated once, at the end of the run.
    train_data_path: tuple[str, ...] = flag("--train-data-path", group=DATA, default=(), to_field=tuple,
                                            help="training shards (instead of --data-path)")
    valid_data_path: tuple[str, ...] = flag("--valid-data-path", group=DATA, default=(), to_field=tuple,
                                            needs=("--train-data-path",),
                                            help="validation shards, one blended set (or --multiple-validation-sets)")
    test_data_path: tuple[str, ...] = flag("--test-data-path", group=DATA, default=(), to_field=tuple,
                                           needs=("--train-data-path",),
                                           help="test shards, evaluated at the end of the run")
    multiple_validation_sets: bool = flag(
        "--multiple-validation-sets", group=DATA, default=False, needs=("--valid-data-path",),
        help="evaluate each --valid-data-path prefix (unweighted) as its own set, logged under its name")
    validation_set_names: tuple[str, ...] = flag(
        "--validation-set-names", group=DATA, default=(), to_field=tuple, needs=("--multiple-validation-sets",),
        help="the sets' names, one per --valid-data-path prefix (default: each prefix's file name)")
    tokenizer_model: str | None = flag("--tokenizer-model", group=DATA, default=None,
                                       help="path to qwen.tiktoken (default: the fetched copy)")
    allow_unpublished_tokenizer: bool = flag(
        "--allow-unpublished-tokenizer", group=DATA, default=False, needs=("--tokenizer-model",),
        help="use a --tokenizer-model whose sha256 is not that of Qwen's published qwen.tiktoken")
    data_cache_path: str | None = flag("--data-cache-path", group=DATA, default=None, output="dir")
    # Packed samples carry their conversations' boundaries (model/packing.py), which every back end honours.
    pack_sft: bool = flag("--no-pack-sft", group=DATA, default=True, dest="no_pack_sft", kind=bool, unset=False,
                          help="pad SFT samples to one conversation each instead of packing them")
    num_workers: int = flag("--num-workers", group=DATA, default=0, bounds=NON_NEGATIVE)
    # "NullTokenizer" (Megatron-LM's name): shards already hold ids below --vocab-size, no text is read.
    tokenizer_type: str = flag(
        "--tokenizer-type", group=DATA, default="QwenTokenizer", choices=TOKENIZER_TYPES,
        help="NullTokenizer: pretraining shards of ids for another vocabulary (--vocab-size), no tokenizer")

    @property
    def per_split(self) -> bool:
        return bool(self.train_data_path or self.valid_data_path or self.test_data_path)

    def data_flags(self) -> dict[str, tuple[str, ...]]:
        """The shard lists given, by flag: what preflight checks."""
        given = {"--data-path": self.data_path, "--train-data-path": self.train_data_path,
                 "--valid-data-path": self.valid_data_path, "--test-data-path": self.test_data_path}
        return {name: paths for name, paths in given.items() if paths}

    def validation_sets(self) -> dict[str, tuple[str, ...]]:
        """Name -> shard list of each validation set of --valid-data-path: one blended set named "validation",
        or with --multiple-validation-sets one per prefix, named "validation-<name>"."""
        if not self.multiple_validation_sets:
            return {"validation": self.valid_data_path} if self.valid_data_path else {}
        names = self.validation_set_names or tuple(os.path.basename(p) for p in self.valid_data_path)
        return {f"validation-{name}": (prefix,) for name, prefix in zip(names, self.valid_data_path)}

    def check(self) -> None:
        """Refuse data flags that cannot go together (RunConfig.validate); the pairs that contradict or need
        each other are declared on the fields (check_flag_pairs)."""
        if self.data_format != "prompts" and not self.mock_data and not self.data_path and not self.train_data_path:
            raise ConfigError("no training data: pass --data-path PREFIX [PREFIX ...] (or --train-data-path) "
                              "or --mock-data")
        if self.multiple_validation_sets:
            self._check_validation_sets()

    def _check_validation_sets(self) -> None:
        if any(_is_number(p) for p in self.valid_data_path):
            raise ConfigError("--multiple-validation-sets evaluates each --valid-data-path prefix on its own: give "
                              "the prefixes without weights")
        if self.validation_set_names and len(self.validation_set_names) != len(self.valid_data_path):
            raise ConfigError(f"--validation-set-names gives {len(self.validation_set_names)} names for "
                              f"{len(self.valid_data_path)} --valid-data-path prefixes; give one per prefix")
        names = [n.removeprefix("validation-") for n in self.validation_sets()]
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
        if bad or len(set(names)) != len(names):
            what = f"name {bad[0]!r} holds other characters than letters, digits, '_', '.', '-'" if bad else \
                "two validation sets have the same name"
            raise ConfigError(f"--multiple-validation-sets: {what}; pass --validation-set-names")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class LogSettings:
    log_interval: int = flag("--log-interval", group=LOGGING, default=1, bounds=POSITIVE)
    eval_interval: int = flag("--eval-interval", group=LOGGING, default=1000, bounds=POSITIVE)
    eval_iters: int = flag("--eval-iters", group=LOGGING, default=10, bounds=NON_NEGATIVE)
    metrics_file: str | None = flag("--metrics-file", group=LOGGING, default=None, output="file",
                                    help="append one JSON object per iteration")
    tensorboard_dir: str | None = flag("--tensorboard-dir", group=LOGGING, default=None, output="dir")
    wandb_project: str | None = flag("--wandb-project", group=LOGGING, default=None,
                                     help="log to wandb (offline unless an API key is configured)")
    wandb_exp_name: str | None = flag("--wandb-exp-name", group=LOGGING, default=None, needs=("--wandb-project",))
    wandb_save_dir: str | None = flag("--wandb-save-dir", group=LOGGING, default=None, needs=("--wandb-project",),
                                      output="dir")
    # torch.profiler over a few steps (training/profiling.py), its trace beside the tensorboard events.
    profile: bool = flag("--profile", group=LOGGING, default=False, needs=("--tensorboard-dir",),
                         help="record the steps from --profile-step-start to --profile-step-end with torch.profiler "
                              "into --tensorboard-dir")
    profile_step_start: int = flag("--profile-step-start", group=LOGGING, default=10, bounds=NON_NEGATIVE,
                                   needs=("--profile",), help="iteration the recording starts after")
    profile_step_end: int = flag("--profile-step-end", group=LOGGING, default=12, bounds=POSITIVE,
                                 needs=("--profile",), help="iteration the recording stops after")
    profile_ranks: tuple[int, ...] = flag("--profile-ranks", group=LOGGING, default=(0,), to_field=_ranks,
                                          help="global ranks to record")

    def check(self) -> None:
        """Refuse logging flags that cannot go together (RunConfig.validate); the pairs are declared on the
        fields (--profile needs --tensorboard-dir, where its trace goes: check_flag_pairs)."""
        if self.profile and self.profile_step_start >= self.profile_step_end:
            raise ConfigError(f"--profile-step-start {self.profile_step_start} must be below "
                              f"--profile-step-end {self.profile_step_end}")


@dataclass(frozen=True)
class CheckpointSettings:
    save: str | None = flag("--save", group=CHECKPOINTING, default=None, output="dir")
    load: str | None = flag("--load", group=CHECKPOINTING, default=None)
    save_interval: int | None = flag("--save-interval", group=CHECKPOINTING, default=None, bounds=POSITIVE,
                                     needs=("--save",))
    no_load_optim: bool = flag("--no-load-optim", group=CHECKPOINTING, default=False)
    no_load_rng: bool = flag("--no-load-rng", group=CHECKPOINTING, default=False)
    finetune: bool = flag("--finetune", group=CHECKPOINTING, default=False, recipe="finetune", negation="--no-finetune",
                          help="load weights only: fresh optimizer, iteration and data position")
    async_save: bool = flag("--async-save", group=CHECKPOINTING, default=False, needs=("--save",))
    override_data_state: bool = flag("--override-data-state", group=CHECKPOINTING, default=False,
                                     help="resume even if the global batch size or the data blend changed")
    exit_interval: int | None = flag("--exit-interval", group=CHECKPOINTING, default=None, bounds=POSITIVE,
                                     help="save and stop every this many iterations")
    exit_signal_handler: bool = flag(
        "--exit-signal-handler", group=CHECKPOINTING, default=False,
        help="on SIGTERM (preemption, time limit; see --exit-signal) save a checkpoint at the next iteration and exit")
    exit_signal: str = flag("--exit-signal", group=CHECKPOINTING, default="SIGTERM", choices=EXIT_SIGNALS,
                            needs=("--exit-signal-handler",),
                            help="the signal --exit-signal-handler waits for (examples/launch.sh: SIGUSR1, which "
                                 "torchrun does not act on)")
    exit_duration_in_mins: float | None = flag(
        "--exit-duration-in-mins", group=CHECKPOINTING, default=None, bounds=POSITIVE,
        help="save and exit 0 at the first iteration boundary this many minutes after start")
    keep_last_checkpoints: int | None = flag(
        "--keep-last-checkpoints", group=CHECKPOINTING, default=None, bounds=POSITIVE, needs=("--save",),
        help="delete older checkpoints once a new one is complete, keeping this many (default: all)")
    load_fallback: bool = flag("--load-fallback", group=CHECKPOINTING, default=False, needs=("--load",),
                               help="if the latest checkpoint under --load is damaged, load the newest whole older one")
    no_verify_checksums: bool = flag(
        "--no-verify-checksums", group=CHECKPOINTING, default=False, needs=("--load",),
        help="--load: skip verifying the checksums of the checkpoint's tensor files (the job reads them once "
             "more, shared among its ranks; docs/reliability.md gives the cost)")
