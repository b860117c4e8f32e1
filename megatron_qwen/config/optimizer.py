"""AdamW and learning-rate schedule settings (Megatron-LM's flag names)."""

from dataclasses import dataclass

from megatron_qwen.config.budget import Budget, samples_of
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
    return f"{recipe.lr_warmup_style} warmup (recipe: {warmup})"


@dataclass(frozen=True)
class OptimizerSettings:
    # The schedule's flags are unset (None) by default so that the recipe's value, or a --deepspeed_config's,
    # can stand in for them (optimizer_settings).
    # 0 is allowed, as in Megatron-LM: a step that leaves the weights as they are (tests/test_sft_jobs.py)
    lr: float = flag("--lr", group=LR, default=3e-4, unset=None, bounds=NON_NEGATIVE,
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
    # A budget in samples or tokens (config/budget.py) resolves its warmup and decay into these, and the
    # iteration fields above are then unused; None with a budget in iterations.
    lr_warmup_samples: int | None = flag("--lr-warmup-samples", group=LR, default=None, bounds=NON_NEGATIVE,
                                         excludes=("--lr-warmup-tokens",),
                                         help="warmup in samples, with --train-samples or --train-tokens")
    lr_decay_samples: int | None = flag("--lr-decay-samples", group=LR, default=None, bounds=POSITIVE,
                                        excludes=("--lr-decay-tokens",),
                                        help="decay horizon in samples (default: the budget)")
    lr_warmup_style: str = flag("--lr-warmup-style", group=LR, default="linear", unset=None,
                                choices=("linear", "cosine"),
                                help=lambda r: f"rise to the peak LR on a line or a half cosine (recipe: "
                                               f"{r.lr_warmup_style})")
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
class WarmupFractionSettings:
    """Read to resolve OptimizerSettings, not stored."""

    lr_warmup_fraction: float | None = flag("--lr-warmup-fraction", group=LR, default=None,
                                            bounds=Bounds(low=0, high=1, high_open=True),
                                            help="warmup as a fraction of --train-iters")


@dataclass(frozen=True)
class _Unit:
    """What the schedule counts in: its name, one step in it, and the flags that set the warmup in it."""

    name: str
    step: int
    warmup_flags: str


def optimizer_settings(args, recipe: Recipe, recipe_lr: float, budget: Budget, global_batch_size: int,
                       seq_length: int, notes: list[str] | None = None) -> OptimizerSettings:
    """The flags (an argparse namespace, a --deepspeed_config's values filled in), else the recipe's
    values (``recipe_lr``: its peak LR for this model size), else the dataclass defaults; warmup and decay
    in the unit of the ``budget`` (config/budget.py). A recipe value changed because of another flag is said
    in one line appended to ``notes``."""
    lr = args.lr if args.lr is not None else recipe_lr
    if budget.samples is None:
        decay = args.lr_decay_iters if args.lr_decay_iters is not None else budget.iters
        unit = _Unit("iterations", 1, "--lr-warmup-iters")
        schedule = {"lr_warmup_iters": _warmup(args.lr_warmup_iters, args, recipe, budget.iters, decay,
                                               recipe.lr_warmup_iters, unit, notes)}
    else:  # the recipe's warmup steps become samples of this run's batch
        decay = samples_of(args, "decay", seq_length) or budget.samples
        unit = _Unit("samples", global_batch_size, "--lr-warmup-samples/-tokens")
        warmup = _warmup(samples_of(args, "warmup", seq_length), args, recipe, budget.samples, decay,
                         recipe.lr_warmup_iters * global_batch_size, unit, notes)
        schedule = {"lr_warmup_iters": 0, "lr_warmup_samples": warmup, "lr_decay_samples": decay}
    settings = from_flags(
        OptimizerSettings, args, lr=lr, min_lr=args.min_lr if args.min_lr is not None else lr * recipe.min_lr_ratio,
        lr_decay_style=args.lr_decay_style or recipe.lr_decay_style,
        lr_warmup_style=args.lr_warmup_style or recipe.lr_warmup_style, **schedule)
    for name, value in (("--lr-warmup-init", settings.lr_warmup_init), ("--min-lr", settings.min_lr)):
        if value > lr:
            raise ConfigError(f"{name} {value} is above the peak LR {lr} (--lr)")
    return settings


def _warmup(given: int | None, args, recipe: Recipe, length: int, decay: int, recipe_warmup: int, unit: _Unit,
            notes: list[str] | None) -> int:
    """Warmup in the budget's unit (``length`` the budget): the flag's, or --lr-warmup-fraction of the budget,
    else the recipe's, shortened to end a step before the decay horizon (said in ``notes``)."""
    if given is not None or args.lr_warmup_fraction is not None:
        warmup = given if given is not None else int(round(args.lr_warmup_fraction * length))
        if warmup >= decay:
            raise ConfigError(f"LR warmup of {warmup} {unit.name} does not end before the decay horizon ({decay} "
                              f"{unit.name}); lower {unit.warmup_flags}/--lr-warmup-fraction (or the "
                              "--deepspeed_config's scheduler.params.warmup_num_steps)")
        return warmup
    warmup = int(round(recipe.lr_warmup_fraction * length)) if recipe.lr_warmup_fraction else recipe_warmup
    shortened = max(0, min(warmup, decay - unit.step))
    if shortened != warmup and notes is not None:
        notes.append(f"note: the {recipe.name} recipe's LR warmup of {warmup} {unit.name} is shortened to "
                     f"{shortened}, to end before the decay horizon ({decay} {unit.name}); {unit.warmup_flags} "
                     "sets it")
    return shortened
