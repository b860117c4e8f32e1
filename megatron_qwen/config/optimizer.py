"""AdamW and learning-rate schedule settings (Megatron-LM's flag names)."""

from dataclasses import dataclass


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
    lr_decay_iters: int | None = None  # None: decay over the whole run
    lr_decay_style: str = "cosine"  # "cosine", "linear" or "constant"
    fused_adam: bool | None = None  # torch's fused AdamW kernel; None: on a GPU (training/optimizer.py)
