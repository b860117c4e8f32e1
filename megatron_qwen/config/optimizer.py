"""AdamW and learning-rate schedule settings (Megatron-LM's flag names)."""

from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import (
    FUSIONS,
    LR,
    NON_NEGATIVE,
    POSITIVE,
    REGULARIZATION,
    Bounds,
    flag,
    from_flags,
)
from megatron_qwen.config.recipes import Recipe

BETA = Bounds(low=0, high=1, high_open=True)  # Adam's bias correction divides by 1 - beta**t


def _adam(name: str, what: str, default: float, bounds):
    """AdamW's constants: the same in every recipe; unset (None) so a --deepspeed_config may stand in."""
    return flag(name, group=REGULARIZATION, default=default, unset=None, bounds=bounds,
                help=f"{what} (unset: {default})")


def _warmup_help(recipe: Recipe) -> str:
    warmup = (f"{recipe.lr_warmup_fraction:.0%} of --train-iters" if recipe.lr_warmup_fraction
              else f"{recipe.lr_warmup_iters} iterations, shortened for shorter runs")
    return f"linear warmup (recipe: {warmup})"


@dataclass(frozen=True)
class OptimizerSettings:
    # The schedule's flags are unset (None) by default so that the recipe's value, or a --deepspeed_config's,
    # can stand in for them (optimizer_settings).
    lr: float = flag("--lr", group=LR, default=3e-4, unset=None, bounds=POSITIVE,
                     help=lambda r: f"peak LR (recipe: {r.lr})")
    min_lr: float = flag("--min-lr", group=LR, default=3e-5, unset=None, bounds=NON_NEGATIVE,
                         help=lambda r: f"final LR (recipe: {r.min_lr_ratio:g} x peak)")
    weight_decay: float = _adam("--weight-decay", "AdamW decoupled weight decay", 0.1, NON_NEGATIVE)
    adam_beta1: float = _adam("--adam-beta1", "AdamW beta1", 0.9, BETA)
    adam_beta2: float = _adam("--adam-beta2", "AdamW beta2", 0.95, BETA)
    adam_eps: float = _adam("--adam-eps", "AdamW epsilon", 1e-8, POSITIVE)
    clip_grad: float = _adam("--clip-grad", "gradient norm clipping (0: none)", 1.0, NON_NEGATIVE)
    lr_warmup_iters: int = flag("--lr-warmup-iters", group=LR, default=0, unset=None, bounds=NON_NEGATIVE,
                                help=_warmup_help)
    # LR at the warmup's first step (Megatron-LM's --lr-warmup-init)
    lr_warmup_init: float = flag("--lr-warmup-init", group=LR, default=0.0, unset=None, bounds=NON_NEGATIVE,
                                 help="LR the warmup starts from (unset: 0.0)")
    # None: decay over the whole run
    lr_decay_iters: int | None = flag("--lr-decay-iters", group=LR, default=None, bounds=POSITIVE,
                                      help="decay horizon (recipe: --train-iters)")
    lr_decay_style: str = flag("--lr-decay-style", group=LR, default="cosine", unset=None,
                               choices=("cosine", "linear", "constant"),
                               help=lambda r: f"LR after the warmup (recipe: {r.lr_decay_style})")
    # torch's fused AdamW kernel; None: on a GPU (training/optimizer.py)
    fused_adam: bool | None = flag(
        "--fused-adam", group=FUSIONS, default=None, negation="--no-fused-adam",
        help="torch's fused AdamW kernel (default: on a GPU; megatron engine, without transformer-engine or apex, "
             "whose FusedAdam megatron-core uses instead)",
        negation_help="torch's default (foreach) AdamW kernel, also on a GPU")


@dataclass(frozen=True)
class ScheduleFlags:
    """Read to resolve OptimizerSettings, not stored."""

    lr_warmup_fraction: float | None = flag("--lr-warmup-fraction", group=LR, default=None,
                                            bounds=Bounds(low=0, high=1, high_open=True),
                                            help="warmup as a fraction of --train-iters")


def optimizer_settings(args, recipe: Recipe, recipe_lr: float, notes: list[str] | None = None) -> OptimizerSettings:
    """The flags (an argparse namespace, a --deepspeed_config's values filled in), else the recipe's
    values (``recipe_lr``: its peak LR for this model size), else the dataclass defaults. A recipe value
    changed because of another flag is said in one line appended to ``notes``."""
    lr = args.lr if args.lr is not None else recipe_lr
    decay_iters = args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters
    if args.lr_warmup_iters is not None or args.lr_warmup_fraction is not None:
        warmup = (args.lr_warmup_iters if args.lr_warmup_iters is not None
                  else int(round(args.lr_warmup_fraction * args.train_iters)))
        if warmup >= decay_iters:
            raise ConfigError(f"LR warmup of {warmup} iterations does not end before the decay horizon "
                              f"({decay_iters} iterations); lower --lr-warmup-iters/--lr-warmup-fraction (or the "
                              "--deepspeed_config's scheduler.params.warmup_num_steps)")
    else:  # the recipe's warmup, shortened for runs shorter than it
        warmup = (int(round(recipe.lr_warmup_fraction * args.train_iters)) if recipe.lr_warmup_fraction
                  else recipe.lr_warmup_iters)
        if warmup >= decay_iters and notes is not None:
            notes.append(f"note: the {recipe.name} recipe's LR warmup of {warmup} iterations is shortened to "
                         f"{decay_iters - 1}, to end before the decay horizon ({decay_iters} iterations); "
                         "--lr-warmup-iters sets it")
        warmup = min(warmup, decay_iters - 1)
    settings = from_flags(
        OptimizerSettings, args, lr=lr, min_lr=args.min_lr if args.min_lr is not None else lr * recipe.min_lr_ratio,
        lr_decay_style=args.lr_decay_style or recipe.lr_decay_style, lr_warmup_iters=warmup)
    if settings.lr_warmup_init > lr:
        raise ConfigError(f"--lr-warmup-init {settings.lr_warmup_init} is above the peak LR {lr} (--lr)")
    return settings
