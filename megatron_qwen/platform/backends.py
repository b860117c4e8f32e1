"""Which layer back end this machine can run (only torch and import checks: used while parsing flags)."""

import importlib.util

import torch

# --transformer-impl's spelling of each back end (Megatron-LM's) -> the name the code uses.
BACKEND_FLAGS = {"transformer_engine": "te", "flash": "flash", "sdpa": "sdpa", "local": "local"}
BACKENDS = tuple(BACKEND_FLAGS.values())
# Back ends whose attention honours an explicit mask, so packed SFT samples stay apart.
MASKED_ATTENTION_BACKENDS = ("sdpa", "local")


def available_backend() -> str:
    """On a GPU: transformer-engine, else flash-attn, else PyTorch's own fused attention (sdpa).
    On the CPU: megatron-core's local modules, the reference every other back end is tested against."""
    if not torch.cuda.is_available():
        return "local"
    if importlib.util.find_spec("transformer_engine") is not None:
        return "te"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash"
    return "sdpa"

