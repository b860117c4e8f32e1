"""Which layer back end this machine can run (only torch and import checks: used while parsing flags)."""

import importlib.util

import torch

# --transformer-impl's spelling of each back end (Megatron-LM's) -> the name the code uses.
BACKEND_FLAGS = {"transformer_engine": "te", "flash": "flash", "sdpa": "sdpa", "local": "local"}
BACKENDS = tuple(BACKEND_FLAGS.values())
# How each back end's attention keeps the conversations of a packed SFT sample apart (model/packing.py):
# megatron-core's THD layout with cu_seqlens (transformer-engine's attention, flash-attn's varlen kernel),
# or a block-diagonal mask (PyTorch's sdpa and megatron-core's unfused attention).
PACKED_SEQUENCE_FORM = {"te": "thd", "flash": "thd", "sdpa": "mask", "local": "mask"}
# flash-attn's kernels take fp16 and bf16 only.
FLASH_PRECISIONS = ("bf16",)


def available_backend(precision: str) -> str:
    """On a GPU: transformer-engine, else flash-attn (in bf16; it has no fp32 kernels), else PyTorch's own
    fused attention (sdpa). On the CPU: megatron-core's local modules, the reference every other back end is
    tested against."""
    if not torch.cuda.is_available():
        return "local"
    if importlib.util.find_spec("transformer_engine") is not None:
        return "te"
    if importlib.util.find_spec("flash_attn") is not None and precision in FLASH_PRECISIONS:
        return "flash"
    return "sdpa"
