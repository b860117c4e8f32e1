"""Which layer back end this machine can run (no heavy imports: used while parsing flags)."""

import importlib.util

import torch

BACKENDS = ("te", "flash", "local")


def available_backend() -> str:
    """transformer-engine, else flash-attn, on a GPU; megatron-core's local modules otherwise."""
    if not torch.cuda.is_available():
        return "local"
    if importlib.util.find_spec("transformer_engine") is not None:
        return "te"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash"
    return "local"
