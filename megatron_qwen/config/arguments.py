"""Command-line flags (Megatron-LM's names) resolved over a recipe into a typed RunConfig."""

import argparse
from dataclasses import asdict, dataclass

from megatron_qwen.config.deepspeed_json import fill_unset_flags, read_json
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import BuildSettings, QwenModelConfig, model_preset
from megatron_qwen.config.optimizer import OptimizerSettings, add_optimizer_arguments, optimizer_settings
from megatron_qwen.config.parallel import ParallelConfig
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.config.zero import ZeroSettings, add_zero_arguments, zero_settings
from megatron_qwen.platform.backends import MASKED_ATTENTION_BACKENDS, available_backend


@dataclass(frozen=True)
class TrainSettings:
    train_iters: int
    micro_batch_size: int
    global_batch_size: int
    seq_length: int
    optim: OptimizerSettings
    # Non-finite steps and loss spikes (training/anomalies.py).
    max_skipped_iterations: int | None = 10
    loss_spike_factor: float | None = None
    skip_loss_spikes: bool = False
    compile_layers: bool = False  # each transformer layer as one torch.compile graph (model/compile.py)


@dataclass(frozen=True)
class DataSettings:
    data_format: str  # "pretrain" or "chatml"
    mock_data: bool
    data_path: tuple[str, ...]
    split: str
    tokenizer_model: str | None
    data_cache_path: str | None
    pack_sft: bool
    num_workers: int
    # "NullTokenizer" (Megatron-LM's name): shards already hold ids below --vocab-size, no text is read.
    tokenizer_type: str = "QwenTokenizer"


@dataclass(frozen=True)
class LogSettings:
    log_interval: int
    eval_interval: int
    eval_iters: int
    metrics_file: str | None
    tensorboard_dir: str | None
    wandb_project: str | None
    wandb_exp_name: str | None
    wandb_save_dir: str | None


@dataclass(frozen=True)
class CheckpointSettings:
    save: str | None
    load: str | None
    save_interval: int | None
    no_load_optim: bool
    no_load_rng: bool
    finetune: bool
    async_save: bool
    override_data_state: bool
    exit_interval: int | None
    exit_signal_handler: bool
    exit_duration_in_mins: float | None = None
    keep_last_checkpoints: int | None = None
    load_fallback: bool = False


@dataclass(frozen=True)
class RunConfig:
    recipe: str
    model_size: str
    model: QwenModelConfig
    build: BuildSettings
    parallel: ParallelConfig
    train: TrainSettings
    data: DataSettings
    log: LogSettings
    checkpoint: CheckpointSettings
    zero: ZeroSettings

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The inverse of to_dict: a run's configuration as a checkpoint stores it. Checkpoints from
        before the zero section kept ZeRO-1 as parallel.use_distributed_optimizer."""
        parallel = dict(d["parallel"])
        zero = d.get("zero", {"stage": int(parallel.get("use_distributed_optimizer", False))})
        parallel.pop("use_distributed_optimizer", None)
        return cls(
            recipe=d["recipe"], model_size=d["model_size"], model=QwenModelConfig(**d["model"]),
            build=BuildSettings(**d["build"]), parallel=ParallelConfig(**parallel),
            train=TrainSettings(**{**d["train"], "optim": OptimizerSettings(**d["train"]["optim"])}),
            data=DataSettings(**{**d["data"], "data_path": tuple(d["data"]["data_path"])}),
            log=LogSettings(**d["log"]), checkpoint=CheckpointSettings(**d["checkpoint"]),
            zero=ZeroSettings(**zero),
        )

    def describe(self) -> str:
        """Every resolved setting, one per line, as printed at start (and saved in checkpoints)."""

        def flatten(prefix: str, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    yield from flatten(f"{prefix}.{k}" if prefix else k, v)
            else:
                yield f"  {prefix} {'.' * max(2, 44 - len(prefix))} {value}"

        return "\n".join(["-------------------- resolved configuration --------------------",
                          *flatten("", self.to_dict())])

    def validate(self, world_size: int) -> None:
        """Refuse a configuration that cannot run: the rules between flags (files: training/preflight.py)."""
        m, b, p, t = self.model, self.build, self.parallel, self.train
        if m.kv_channels is None and m.hidden_size % m.num_attention_heads != 0:
            raise ConfigError(f"--hidden-size {m.hidden_size} is not a multiple of "
                              f"--num-attention-heads {m.num_attention_heads}; pass --kv-channels")
        if m.padded_vocab_size < m.vocab_size:
            raise ConfigError(f"the model has {m.padded_vocab_size} vocabulary rows, fewer than --vocab-size "
                              f"{m.vocab_size}; raise --make-vocab-size-divisible-by or --vocab-size")
        p.validate(world_size, m.num_layers, m.num_attention_heads, m.padded_vocab_size)
        self.zero.validate(p, self.checkpoint.async_save)
        if self.zero.deepspeed and t.skip_loss_spikes:
            raise ConfigError("--skip-loss-spikes needs --zero-engine megatron: DeepSpeed applies the update before "
                              "the batch's loss is known; drop it (--loss-spike-factor alone still reports spikes)")
        if t.compile_layers and (self.zero.deepspeed or b.transformer_impl == "te"):
            raise ConfigError("--compile-layers is built for the megatron engine with the local, sdpa or flash back "
                              "end (transformer-engine's layer is fused already; the DeepSpeed engine wraps the "
                              "model itself): drop it, or pass --zero-engine megatron --transformer-impl sdpa")
        dp = p.data_parallel_size(world_size)
        if t.global_batch_size % (t.micro_batch_size * dp) != 0:
            raise ConfigError(
                f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
                f"{t.micro_batch_size} x data-parallel size {dp}; make it a multiple of "
                f"{t.micro_batch_size * dp}")
        if t.seq_length > m.max_position_embeddings:
            raise ConfigError(f"--seq-length {t.seq_length} exceeds --max-position-embeddings "
                              f"{m.max_position_embeddings}; raise --max-position-embeddings or shorten --seq-length")
        if t.seq_length % (2 * p.context_parallel_size) != 0 and p.context_parallel_size > 1:
            raise ConfigError(f"--seq-length {t.seq_length} must be a multiple of 2 x --context-parallel-size")
        if p.context_parallel_size > 1 and b.transformer_impl != "te":
            raise ConfigError("--context-parallel-size > 1 needs transformer-engine attention (a GPU with "
                              "transformer-engine installed, --transformer-impl transformer_engine); "
                              f"this run uses the {b.transformer_impl!r} back end")
        if p.sequence_parallel and t.seq_length % p.tensor_model_parallel_size != 0:
            raise ConfigError(f"--sequence-parallel needs --seq-length divisible by "
                              f"--tensor-model-parallel-size {p.tensor_model_parallel_size}")
        if not self.data.mock_data and not self.data.data_path:
            raise ConfigError("no training data: pass --data-path PREFIX [PREFIX ...] or --mock-data")
        if self.data.tokenizer_type == "NullTokenizer" and self.data.data_format == "chatml":
            raise ConfigError("--tokenizer-type NullTokenizer is for pretraining shards; chat SFT renders its "
                              "turns with Qwen's tokenizer: drop the flag")
        if t.train_iters < 1:
            raise ConfigError("--train-iters must be at least 1")
        if self.checkpoint.keep_last_checkpoints is not None and self.checkpoint.keep_last_checkpoints < 1:
            raise ConfigError("--keep-last-checkpoints must be at least 1 (the latest checkpoint is never deleted)")
        if self.checkpoint.finetune and not self.checkpoint.load:
            raise ConfigError(f"{self.recipe} starts from a trained model: pass --load CHECKPOINT_DIR "
                              "(or --no-finetune to train from scratch)")

    def num_microbatches(self, world_size: int) -> int:
        dp = self.parallel.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)


class _OneLineErrorParser(argparse.ArgumentParser):
    """Flag errors as one line on stderr (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


TOKENIZER_TYPES = ("QwenTokenizer", "NullTokenizer")
FUSIONS = ("bias_swiglu_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "rope_fusion",
           "gradient_accumulation_fusion", "rmsnorm_fusion", "cross_entropy_fusion")


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    p = _OneLineErrorParser(
        prog=f"python -m megatron_qwen.{recipe.name}",
        description=f"{recipe.description}. Flags follow Megatron-LM's names; defaults are the recipe's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model-size", default="tiny", help="preset: tiny, tiny-qwen-vocab, 1.8b, 7b, 14b, 72b")
    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--kv-channels",
                 "--max-position-embeddings", "--vocab-size", "--rotary-base"):
        g.add_argument(flag, type=int, default=None, help="override the preset")
    g.add_argument("--norm-epsilon", type=float, default=None, help="override the preset")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="with --vocab-size: pad the embedding rows to a multiple of this (the same at every TP)")
    g.add_argument("--transformer-impl", default="auto",
                   choices=["auto", "transformer_engine", "flash", "sdpa", "local"],
                   help="layer back end; auto picks transformer_engine, then flash-attn, then torch sdpa on a GPU, "
                        "and local on the CPU")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision (fp32 master weights)")
    g.add_argument("--hidden-dropout", type=float, default=recipe.hidden_dropout, help="dropout after each block")
    g.add_argument("--attention-dropout", type=float, default=recipe.attention_dropout,
                   help="dropout on attention probabilities")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    g.add_argument("--recompute-num-layers", type=int, default=1)
    g.add_argument("--seed", type=int, default=BuildSettings.seed)
    for fusion in FUSIONS:
        g.add_argument(f"--no-{fusion.replace('_', '-')}", dest=fusion, action="store_false",
                       help="turn this fusion off (on by default where it runs; docs/PERFORMANCE.md)")
    g.add_argument("--use-cpu-initialization", action="store_true",
                   help="draw the initial weights on the CPU, also on a GPU: the same weights as a CPU run and "
                        "on every GPU model, slower (by default they are drawn on the device that holds them)")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true", help="ZeRO-1: shard optimizer state over DP")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--distributed-timeout-minutes", type=int, default=ParallelConfig.distributed_timeout_minutes)

    add_zero_arguments(p)

    g = p.add_argument_group("training")
    g.add_argument("--train-iters", type=int, default=recipe.train_iters, help="optimizer steps")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help=f"sequences per forward pass on one data-parallel rank (recipe: {recipe.micro_batch_size})")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help=f"sequences per step (recipe: {recipe.global_batch_size}, or its per-size value)")
    g.add_argument("--seq-length", type=int, default=recipe.seq_length, help="tokens per sequence")
    add_optimizer_arguments(g, recipe)
    g.add_argument("--compile-layers", action="store_true",
                   help="each transformer layer's forward and backward as compiled graphs (torch.compile; megatron "
                        "engine, local/sdpa/flash back ends; docs/PERFORMANCE.md)")
    g.add_argument("--max-skipped-iterations", type=int, default=TrainSettings.max_skipped_iterations,
                   help="stop after this many skipped updates in a row (non-finite loss or gradient norm); 0: never")
    g.add_argument("--loss-spike-factor", type=float, default=None,
                   help="report a loss above this many times the mean of the last 20 losses")
    g.add_argument("--skip-loss-spikes", action="store_true", help="with --loss-spike-factor: also skip the update")

    g = p.add_argument_group("data")
    g.add_argument("--mock-data", action="store_true", help="megatron-core's synthetic GPT data, no files needed")
    g.add_argument("--data-path", nargs="+", default=[],
                   help="shard prefixes, optionally weighted: --data-path 0.7 web 0.3 code")
    g.add_argument("--split", default="969,30,1", help="train,valid,test proportions")
    g.add_argument("--tokenizer-model", default=None, help="path to qwen.tiktoken (default: the fetched copy)")
    g.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="QwenTokenizer",
                   help="NullTokenizer: pretraining shards of ids for another vocabulary (--vocab-size), no tokenizer")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--no-pack-sft", action="store_true",
                   help="pad SFT samples instead of packing them (GPU back ends always pad)")
    g.add_argument("--num-workers", type=int, default=0)

    g = p.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--metrics-file", default=None, help="append one JSON object per iteration")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None, help="log to wandb (offline unless an API key is configured)")
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--wandb-save-dir", default=None)

    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true", default=recipe.finetune,
                   help="load weights only: fresh optimizer, iteration and data position")
    g.add_argument("--no-finetune", dest="finetune", action="store_false")
    g.add_argument("--async-save", action="store_true")
    g.add_argument("--override-data-state", action="store_true",
                   help="resume even if the global batch size or the data blend changed")
    g.add_argument("--exit-interval", type=int, default=None, help="save and stop every this many iterations")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM (preemption, time limit) save a checkpoint at the next iteration and exit")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit 0 at the first iteration boundary this many minutes after start")
    g.add_argument("--keep-last-checkpoints", type=int, default=None,
                   help="delete older checkpoints once a new one is complete, keeping this many (default: all)")
    g.add_argument("--load-fallback", action="store_true",
                   help="if the latest checkpoint under --load is damaged, load the newest whole older one")
    return p


def _resolve_backend(flag: str) -> str:
    return available_backend() if flag == "auto" else {"transformer_engine": "te"}.get(flag, flag)


def parse_run_config(recipe: Recipe, argv: list[str] | None = None) -> RunConfig:
    args = build_parser(recipe).parse_args(argv)
    try:
        base = model_preset(args.model_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = base.with_overrides(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, ffn_hidden_size=args.ffn_hidden_size,
        kv_channels=args.kv_channels, max_position_embeddings=args.max_position_embeddings,
        rotary_base=args.rotary_base, norm_epsilon=args.norm_epsilon, vocab_size=args.vocab_size,
        padded_vocab_size=_padded_rows(args.vocab_size, args.make_vocab_size_divisible_by),
    )
    # A Hugging Face --load (or a checkpoint converted from one) fixes the shape;
    # a shape flag or a named --model-size that contradicts it is refused (docs/checkpoints.md).
    if args.load:
        from megatron_qwen.hf.source import check_flags_against, imported_model

        imported = imported_model(args.load)
        if imported is not None:
            named = args.model_size != build_parser(recipe).get_default("model_size")
            shape_flags = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "kv_channels",
                           "max_position_embeddings", "rotary_base", "norm_epsilon", "vocab_size")
            model = check_flags_against(imported, args.load, {f: getattr(args, f) for f in shape_flags},
                                        args.model_size if named else None)
            args.model_size = args.model_size if named else "hf"
    size_defaults = recipe.per_size.get(args.model_size.lower().removeprefix("qwen-"), {})
    if args.deepspeed_config:  # Megatron-DeepSpeed's JSON stands in for the flags left unset
        fill_unset_flags(args, read_json(args.deepspeed_config), args.deepspeed_config,
                         default_lr=size_defaults.get("lr", recipe.lr))
    gbs = args.global_batch_size or size_defaults.get("global_batch_size", recipe.global_batch_size)
    parallel = ParallelConfig(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        num_layers_per_virtual_pipeline_stage=args.num_layers_per_virtual_pipeline_stage,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        distributed_timeout_minutes=args.distributed_timeout_minutes,
    )
    build = BuildSettings(
        transformer_impl=_resolve_backend(args.transformer_impl), precision="bf16" if args.bf16 else "fp32",
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        recompute_granularity=args.recompute_granularity, recompute_num_layers=args.recompute_num_layers,
        seed=args.seed, cpu_initialization=args.use_cpu_initialization,
        **{fusion: getattr(args, fusion) for fusion in FUSIONS},
    )
    train = TrainSettings(
        train_iters=args.train_iters, micro_batch_size=args.micro_batch_size or recipe.micro_batch_size,
        global_batch_size=gbs,
        seq_length=args.seq_length, max_skipped_iterations=args.max_skipped_iterations,
        loss_spike_factor=args.loss_spike_factor, skip_loss_spikes=args.skip_loss_spikes,
        compile_layers=args.compile_layers,
        optim=optimizer_settings(args, recipe, size_defaults.get("lr", recipe.lr)),
    )
    data = DataSettings(
        data_format=recipe.data_format, mock_data=args.mock_data, data_path=tuple(args.data_path),
        split=args.split, tokenizer_model=args.tokenizer_model, data_cache_path=args.data_cache_path,
        # Packed samples carry block-diagonal attention masks; back ends that run plain causal
        # attention (transformer-engine, flash-attn) pad each sample instead.
        pack_sft=not args.no_pack_sft and build.transformer_impl in MASKED_ATTENTION_BACKENDS,
        num_workers=args.num_workers, tokenizer_type=args.tokenizer_type,
    )
    log = LogSettings(
        log_interval=args.log_interval, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
        metrics_file=args.metrics_file, tensorboard_dir=args.tensorboard_dir,
        wandb_project=args.wandb_project, wandb_exp_name=args.wandb_exp_name, wandb_save_dir=args.wandb_save_dir,
    )
    ckpt = CheckpointSettings(
        save=args.save, load=args.load, save_interval=args.save_interval, no_load_optim=args.no_load_optim,
        no_load_rng=args.no_load_rng, finetune=args.finetune, async_save=args.async_save,
        override_data_state=args.override_data_state, exit_interval=args.exit_interval,
        exit_signal_handler=args.exit_signal_handler, exit_duration_in_mins=args.exit_duration_in_mins,
        keep_last_checkpoints=args.keep_last_checkpoints,
        load_fallback=args.load_fallback,
    )
    zero = zero_settings(args)
    return RunConfig(recipe=recipe.name, model_size=args.model_size, model=model, build=build,
                     parallel=parallel, train=train, data=data, log=log, checkpoint=ckpt, zero=zero)


def _padded_rows(vocab_size: int | None, divisible_by: int) -> int | None:
    """Embedding rows for an explicit --vocab-size (None: the preset's rows)."""
    if vocab_size is None:
        return None
    if divisible_by < 1:
        raise ConfigError("--make-vocab-size-divisible-by must be at least 1")
    return -(-vocab_size // divisible_by) * divisible_by
