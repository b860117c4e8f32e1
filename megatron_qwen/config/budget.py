"""How long a run trains, in optimizer steps, samples or tokens, and its LR schedule in the same unit.

Megatron-LM's two forms: --train-iters with --lr-warmup-iters/--lr-decay-iters, or --train-samples with
--lr-warmup-samples/--lr-decay-samples. A budget in tokens (--train-tokens, with --lr-warmup-tokens and
--lr-decay-tokens) is one in samples of --seq-length tokens each: the report states its budgets in tokens
(2.2T, 2.4T, 3.0T). A sample or token budget runs samples // --global-batch-size steps, and its schedule
counts consumed samples, as Megatron-LM's does (docs/launching.md).
"""

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import LR, NON_NEGATIVE, POSITIVE, TRAINING, flag
from megatron_qwen.config.recipes import Recipe


def count(text: str) -> int:
    """A positive whole number, also written in scientific notation: 2400000000000 or 2.4e12."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(text) from None
    if value != value.to_integral_value() or value < 0:
        raise ValueError(text)
    return int(value)


count.__name__ = "count"  # argparse names the type in its error: "invalid count value: '1.5'"


@dataclass(frozen=True)
class TokenBudgetSettings:
    """Read to resolve the budget and the schedule into samples, not stored."""

    train_tokens: int | None = flag("--train-tokens", group=TRAINING, default=None, kind=count, bounds=POSITIVE,
                                    help="budget in tokens (2.4e12): --train-tokens / --seq-length samples")
    lr_warmup_tokens: int | None = flag("--lr-warmup-tokens", group=LR, default=None, kind=count,
                                        bounds=NON_NEGATIVE,
                                        help="warmup in tokens, with --train-tokens or --train-samples")
    lr_decay_tokens: int | None = flag("--lr-decay-tokens", group=LR, default=None, kind=count, bounds=POSITIVE,
                                       help="decay horizon in tokens (default: the budget)")


@dataclass(frozen=True)
class Budget:
    """A run's resolved length: ``iters`` steps; ``samples`` for a budget given in samples or tokens (None when
    given in steps), whose schedule then counts in samples."""

    iters: int
    samples: int | None = None


SAMPLE_SCHEDULE_FLAGS = ("lr_warmup_samples", "lr_decay_samples", "lr_warmup_tokens", "lr_decay_tokens")
ITERATION_SCHEDULE_FLAGS = ("lr_warmup_iters", "lr_decay_iters")


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def budget_given(args) -> list[str]:
    """The flags among --train-iters, --train-samples and --train-tokens given (their dests)."""
    return [d for d in ("train_iters", "train_samples", "train_tokens") if getattr(args, d) is not None]


def resolve_budget(args, recipe: Recipe, global_batch_size: int, seq_length: int) -> Budget:
    """The run's length from --train-iters, --train-samples or --train-tokens (at most one: their declarations
    exclude each other, check_flag_pairs), else the recipe's steps; the schedule's flags must count in the
    budget's unit."""
    given = budget_given(args)
    if not given or given[0] == "train_iters":
        _refuse_other_unit(args, SAMPLE_SCHEDULE_FLAGS, "--train-iters", "--lr-warmup-iters/--lr-decay-iters")
        return Budget(iters=args.train_iters if given else recipe.train_iters)
    _refuse_other_unit(args, ITERATION_SCHEDULE_FLAGS, _flag_name(given[0]),
                       "--lr-warmup-samples/--lr-decay-samples or --lr-warmup-tokens/--lr-decay-tokens")
    samples = args.train_samples if given[0] == "train_samples" else args.train_tokens // seq_length
    if samples < global_batch_size:
        raise ConfigError(f"{_flag_name(given[0])} {getattr(args, given[0])} is {samples} samples of "
                          f"--seq-length {seq_length}, less than one step of --global-batch-size {global_batch_size}")
    return Budget(iters=samples // global_batch_size, samples=samples)


def _refuse_other_unit(args, dests: tuple[str, ...], budget_flag: str, same_unit: str) -> None:
    for dest in dests:
        if getattr(args, dest, None) is not None:
            raise ConfigError(f"{_flag_name(dest)} counts in another unit than {budget_flag}; the schedule counts "
                              f"in the budget's unit: use {same_unit}")


def samples_of(args, dest: str, seq_length: int) -> int | None:
    """--lr-{warmup,decay}-samples, else the same in tokens converted to samples (their declarations exclude
    each other), else None."""
    tokens = getattr(args, f"lr_{dest}_tokens")
    return getattr(args, f"lr_{dest}_samples") if tokens is None else tokens // seq_length
