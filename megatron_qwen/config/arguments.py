"""Command-line flags (Megatron-LM's names) resolved over a recipe into a typed RunConfig.

Each flag is declared once, on the dataclass field it sets (config/flags.py); the parser and the copy
into the dataclasses are built from those declarations. The dataclasses are what checkpoints store:
a new field needs a default, or checkpoints written before it stop loading (RunConfig.from_dict).
"""

import argparse
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.deepspeed_json import fill_unset_flags, read_json
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import SHAPE, add_flags, flag, flag_fields, from_flags
from megatron_qwen.config.model import MODEL_PRESETS, BuildSettings, QwenModelConfig, VocabPadding, model_preset
from megatron_qwen.config.optimizer import OptimizerSettings, ScheduleFlags, optimizer_settings
from megatron_qwen.config.parallel import ParallelConfig
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.config.settings import CheckpointSettings, DataSettings, LogSettings, TrainSettings
from megatron_qwen.config.zero import ZeroSettings, ZeroSwitches, zero_settings
from megatron_qwen.platform.backends import MASKED_ATTENTION_BACKENDS


@dataclass(frozen=True)
class RunConfig:
    """A run's resolved settings. Library code that only builds a model constructs one directly
    (RunConfig(recipe=..., model_size=..., model=...), the other sections' defaults)."""

    recipe: str
    model_size: str = flag("--model-size", group=SHAPE, unset="tiny", help=f"preset: {', '.join(MODEL_PRESETS)}")
    model: QwenModelConfig
    build: BuildSettings = field(default_factory=BuildSettings)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings = field(default_factory=DataSettings)
    log: LogSettings = field(default_factory=LogSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    zero: ZeroSettings = field(default_factory=ZeroSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The inverse of to_dict: a run's configuration as a checkpoint stores it, also in older layouts:
        before the zero section ZeRO-1 was parallel.use_distributed_optimizer; before the fusions
        moved to the build settings, compile_layers was train.compile_layers."""
        parallel, train, build = dict(d["parallel"]), dict(d["train"]), dict(d["build"])
        zero = d.get("zero", {"stage": int(parallel.get("use_distributed_optimizer", False))})
        parallel.pop("use_distributed_optimizer", None)
        if "compile_layers" in train:
            build["compile_layers"] = train.pop("compile_layers")
        return _from_stored(cls, {**d, "parallel": parallel, "train": train, "build": build, "zero": zero})

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
        if b.compile_layers and (self.zero.deepspeed or b.transformer_impl == "te"):
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


# The dataclasses whose fields declare the flags, in --help's order within each group. ZeroSwitches,
# ScheduleFlags and VocabPadding hold flags read only to resolve other settings.
FLAG_CLASSES = (RunConfig, QwenModelConfig, VocabPadding, BuildSettings, ParallelConfig, ZeroSettings, ZeroSwitches,
                TrainSettings, OptimizerSettings, ScheduleFlags, DataSettings, CheckpointSettings, LogSettings)


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog=f"python -m megatron_qwen.{recipe.name}",
        description=f"{recipe.description}. Flags follow Megatron-LM's names; defaults are the recipe's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(p, FLAG_CLASSES, recipe)
    return p


def parse_run_config(recipe: Recipe, argv: list[str] | None = None) -> RunConfig:
    parser = build_parser(recipe)
    args = parser.parse_args(argv)
    model, model_size = _model(args, named=args.model_size != parser.get_default("model_size"))
    size_defaults = recipe.per_size.get(model_size.lower().removeprefix("qwen-"), {})
    if args.deepspeed_config:  # Megatron-DeepSpeed's JSON stands in for the flags left unset
        fill_unset_flags(args, read_json(args.deepspeed_config), args.deepspeed_config,
                         default_lr=size_defaults.get("lr", recipe.lr))
    build = from_flags(BuildSettings, args)
    train = from_flags(
        TrainSettings, args, micro_batch_size=args.micro_batch_size or recipe.micro_batch_size,
        global_batch_size=args.global_batch_size or size_defaults.get("global_batch_size", recipe.global_batch_size),
        optim=optimizer_settings(args, recipe, size_defaults.get("lr", recipe.lr)))
    data = from_flags(DataSettings, args, data_format=recipe.data_format,
                      pack_sft=not args.no_pack_sft and build.transformer_impl in MASKED_ATTENTION_BACKENDS)
    return RunConfig(recipe=recipe.name, model_size=model_size, model=model, build=build,
                     parallel=from_flags(ParallelConfig, args), train=train, data=data,
                     log=from_flags(LogSettings, args), checkpoint=from_flags(CheckpointSettings, args),
                     zero=zero_settings(args))


def _model(args, named: bool) -> tuple[QwenModelConfig, str]:
    """The --model-size preset with the shape flags over it, and the size's name. A Hugging Face --load
    (or a checkpoint converted from one) fixes the shape instead (size "hf"); a shape flag or a named
    --model-size that contradicts it is refused (docs/checkpoints.md)."""
    shape = {f.name: getattr(args, f.name) for f in flag_fields(QwenModelConfig)}
    if args.load:
        from megatron_qwen.hf.source import check_flags_against, imported_model

        imported = imported_model(args.load)
        if imported is not None:
            model = check_flags_against(imported, args.load, shape, args.model_size if named else None)
            return model, args.model_size if named else "hf"
    try:
        base = model_preset(args.model_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    padded = _padded_rows(args.vocab_size, args.make_vocab_size_divisible_by)
    return base.with_overrides(**shape, padded_vocab_size=padded), args.model_size


def _padded_rows(vocab_size: int | None, divisible_by: int) -> int | None:
    """Embedding rows for an explicit --vocab-size (None: the preset's rows)."""
    if vocab_size is None:
        return None
    if divisible_by < 1:
        raise ConfigError("--make-vocab-size-divisible-by must be at least 1")
    return -(-vocab_size // divisible_by) * divisible_by


def _from_stored(cls, stored: dict):
    """``cls`` from its to_dict form: nested settings from their dicts, lists back to tuples. A field
    newer than the checkpoint takes its default."""
    values = dict(stored)
    for f in fields(cls):
        if f.name in values and is_dataclass(f.type):
            values[f.name] = _from_stored(f.type, values[f.name])
        elif f.name in values and getattr(f.type, "__origin__", None) is tuple:
            values[f.name] = tuple(values[f.name])
    return cls(**values)
