"""AdamW and learning-rate schedule settings (Megatron-LM's flag names)."""

from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import Recipe


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_warmup_iters: int = 0
    lr_warmup_init: float = 0.0  # LR at the warmup's first step (Megatron-LM's --lr-warmup-init)
    lr_decay_iters: int | None = None  # None: decay over the whole run
    lr_decay_style: str = "cosine"  # "cosine", "linear" or "constant"
    fused_adam: bool | None = None  # torch's fused AdamW kernel; None: on a GPU (training/optimizer.py)


# Flags whose unset value is the dataclass default (a --deepspeed_config may stand in for them).
ADAM_FLAGS = (("weight_decay", "AdamW decoupled weight decay"), ("adam_beta1", "AdamW beta1"),
              ("adam_beta2", "AdamW beta2"), ("adam_eps", "AdamW epsilon"), ("clip_grad", "gradient norm clipping"),
              ("lr_warmup_init", "LR the warmup starts from"))


def add_optimizer_arguments(g, recipe: Recipe) -> None:
    """AdamW and LR-schedule flags; every default is None so that an unset flag can be told apart."""
    g.add_argument("--lr", type=float, default=None, help=f"peak LR (recipe: {recipe.lr})")
    g.add_argument("--min-lr", type=float, default=None,
                   help=f"final LR (recipe: {recipe.min_lr_ratio:g} x peak)")
    g.add_argument("--lr-decay-style", choices=["cosine", "linear", "constant"], default=None,
                   help=f"LR after the warmup (recipe: {recipe.lr_decay_style})")
    recipe_warmup = (f"{recipe.lr_warmup_fraction:.0%} of --train-iters" if recipe.lr_warmup_fraction
                     else f"{recipe.lr_warmup_iters} iterations, shortened for shorter runs")
    g.add_argument("--lr-warmup-iters", type=int, default=None, help=f"linear warmup (recipe: {recipe_warmup})")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="warmup as a fraction of --train-iters")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="decay horizon (recipe: --train-iters)")
    for name, what in ADAM_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                       help=f"{what} (unset: {getattr(OptimizerSettings, name)})")
    g.add_argument("--fused-adam", dest="fused_adam", action="store_const", const=True, default=None,
                   help="torch's fused AdamW kernel (default: on a GPU; megatron engine, without transformer-engine "
                        "or apex, whose FusedAdam megatron-core uses instead)")
    g.add_argument("--no-fused-adam", dest="fused_adam", action="store_const", const=False,
                   help="torch's default (foreach) AdamW kernel, also on a GPU")


def optimizer_settings(args, recipe: Recipe, recipe_lr: float) -> OptimizerSettings:
    """The flags (an argparse namespace, a --deepspeed_config's values filled in), else the recipe's
    values (``recipe_lr``: its peak LR for this model size), else the dataclass defaults."""
    lr = args.lr if args.lr is not None else recipe_lr
    decay_iters = args.lr_decay_iters or args.train_iters
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
        warmup = min(warmup, decay_iters - 1)
    adam = {name: getattr(args, name) if getattr(args, name) is not None else getattr(OptimizerSettings, name)
            for name, _ in ADAM_FLAGS}
    if adam["lr_warmup_init"] > lr:
        raise ConfigError(f"--lr-warmup-init {adam['lr_warmup_init']} is above the peak LR {lr} (--lr)")
    return OptimizerSettings(
        lr=lr, min_lr=args.min_lr if args.min_lr is not None else lr * recipe.min_lr_ratio,
        lr_decay_style=args.lr_decay_style or recipe.lr_decay_style, lr_warmup_iters=warmup,
        lr_decay_iters=args.lr_decay_iters, fused_adam=args.fused_adam, **adam)
