"""Command-line flags (Megatron-LM's names) resolved over a recipe into a typed RunConfig.

Each flag is declared once, on the dataclass field it sets (config/flags.py); the parser and the copy
into the dataclasses are built from those declarations. Parsing sits above the model and checkpoint
layers because a --load that holds a Hugging Face model fixes the model's shape (docs/checkpoints.md).
"""

import argparse

from megatron_qwen.checkpointing.resolver import resolve
from megatron_qwen.config.budget import TokenBudgetSettings, budget_given, resolve_budget
from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.deepspeed_flags import fill_unset_flags
from megatron_qwen.config.deepspeed_json import read_json
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import add_flags, check_flag_pairs, flag_fields, from_flags
from megatron_qwen.config.model import (
    BuildSettings,
    QwenModelConfig,
    VocabPaddingSettings,
    model_preset,
    resolve_backend,
)
from megatron_qwen.config.optimizer import OptimizerSettings, WarmupFractionSettings, optimizer_settings
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.ppo import PPOSettings
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import CheckpointSettings, DataSettings, LogSettings, TrainSettings
from megatron_qwen.config.zero import ZeroAliasSettings, ZeroSettings, zero_settings
from megatron_qwen.data.blend import naming
from megatron_qwen.hf.source import check_flags_against

# The dataclasses whose fields declare the flags, in --help's order within each group. VocabPaddingSettings,
# ZeroAliasSettings, TokenBudgetSettings and WarmupFractionSettings hold flags read only to resolve other
# settings; they are not stored.
FLAG_CLASSES = (RunConfig, QwenModelConfig, VocabPaddingSettings, BuildSettings, ParallelSettings, ZeroSettings,
                ZeroAliasSettings, TrainSettings, TokenBudgetSettings, OptimizerSettings, WarmupFractionSettings,
                DataSettings, CheckpointSettings, LogSettings)


def flag_classes(recipe: Recipe) -> tuple:
    """FLAG_CLASSES, and PPO's settings for the PPO job (its flags mean nothing to the others)."""
    return FLAG_CLASSES + ((PPOSettings,) if recipe.data_format == "prompts" else ())


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog=f"python -m megatron_qwen.{recipe.name}",
        description=f"{recipe.description}. Flags follow Megatron-LM's names; defaults are the recipe's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(p, flag_classes(recipe), recipe)
    return p


def parse_run_config(recipe: Recipe, argv: list[str] | None = None, notes: list[str] | None = None) -> RunConfig:
    """The run the flags ask for. ``notes``: gets one line for each recipe value another flag changed (the
    entry points print them)."""
    parser = build_parser(recipe)
    args = parser.parse_args(argv)
    check_flag_pairs(parser, args, flag_classes(recipe))
    model, model_size = _model(args, named=args.model_size != parser.get_default("model_size"))
    size_defaults = recipe.per_size.get(model_size.lower().removeprefix("qwen-"), {})
    if args.deepspeed_config:  # Megatron-DeepSpeed's JSON stands in for the flags left unset
        fill_unset_flags(args, read_json(args.deepspeed_config), args.deepspeed_config,
                         default_lr=size_defaults.get("lr", recipe.lr))
    build = from_flags(BuildSettings, args, head=recipe.head,
                       transformer_impl=resolve_backend(args.transformer_impl, "bf16" if args.bf16 else "fp32"))
    gbs = _given_or(args.global_batch_size, size_defaults.get("global_batch_size", recipe.global_batch_size))
    if recipe.train_iters is None and not budget_given(args):  # the recipe's single epoch
        args.train_iters = _one_epoch(args, gbs)
    budget = resolve_budget(args, recipe, gbs, args.seq_length)
    train = from_flags(
        TrainSettings, args, micro_batch_size=_given_or(args.micro_batch_size, recipe.micro_batch_size),
        global_batch_size=gbs, train_iters=budget.iters, train_samples=budget.samples,
        optim=optimizer_settings(args, recipe, size_defaults.get("lr", recipe.lr), budget, gbs, args.seq_length,
                                 notes))
    data = from_flags(DataSettings, args, data_format=recipe.data_format, pack_sft=not args.no_pack_sft)
    return RunConfig(recipe=recipe.name, model_size=model_size, model=model, build=build,
                     parallel=from_flags(ParallelSettings, args), train=train, data=data,
                     log=from_flags(LogSettings, args), checkpoint=from_flags(CheckpointSettings, args),
                     zero=zero_settings(args),
                     ppo=from_flags(PPOSettings, args) if recipe.data_format == "prompts" else PPOSettings())


def _one_epoch(args, global_batch_size: int) -> int:
    """Steps of one pass over the training pairs, --train-data-path's or --data-path's training split (the
    reward recipe's length)."""
    flag, paths, split = (("--train-data-path", args.train_data_path, "1,0,0") if args.train_data_path else
                          ("--data-path", args.data_path, args.split))
    if not paths:
        raise ConfigError("the recipe trains for one epoch of its training data: pass --data-path (or "
                          "--train-data-path), or --train-iters")
    # deferred: data.pairs imports megatron-core (seconds); only a reward run's epoch needs it
    from megatron_qwen.data.pairs import training_pairs  # reads the shards' indexes only

    with naming(flag):
        return max(1, 2 * training_pairs(list(paths), split) // global_batch_size)


def _given_or(value, default):
    return default if value is None else value


def _model(args, named: bool) -> tuple[QwenModelConfig, str]:
    """The --model-size preset with the shape flags over it, and the size's name. A Hugging Face --load
    (or a checkpoint converted from one) fixes the shape instead (size "hf"); a shape flag or a named
    --model-size that contradicts it is refused (docs/checkpoints.md)."""
    shape = {f.name: getattr(args, f.name) for f in flag_fields(QwenModelConfig)}
    if args.load:
        imported = resolve(args.load).imported_model
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
    return -(-vocab_size // divisible_by) * divisible_by
