"""Run megatron-core on a machine without CUDA.

megatron-core assumes CUDA in a handful of places that have nothing to do with the math:
scratch tensors allocated with ``device="cuda"`` or ``torch.cuda.current_device()``,
``torch.cuda.synchronize()`` around p2p exchanges, a CUDA RNG tracker, and dtype checks
spelled ``param.type() == "torch.cuda.FloatTensor"``. This module redirects exactly those
to the CPU, so tensor, pipeline and data parallelism run over gloo with the same numerics.

It is applied only when CUDA is absent (``install_if_needed``); on a GPU machine it does
nothing. Nothing else in the package knows about it.
"""

import logging

import torch
from megatron.core.tensor_parallel import random as mcore_random
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_installed = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _to_cpu_device(device):
    return _CPU if _is_cuda_device(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU on every torch call.

    Why a function mode: ``device="cuda"`` literals sit inside megatron-core functions
    (causal masks, token counters, grad-norm scratch tensors); a mode catches them all
    without patching each call site.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron-core accepts only "torch.cuda.*Tensor" parameters in grad clipping and
            # the optimizers; report CPU tensors under their CUDA name.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        return func(*args, **kwargs)


def _cpu_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def install() -> None:
    """Redirect megatron-core's CUDA calls to the CPU (idempotent)."""
    global _installed
    if _installed:
        return

    # Scratch tensors use torch.cuda.current_device() as a device; "cpu" is a valid one.
    torch.cuda.current_device = lambda: _CPU
    # p2p exchanges and barriers synchronize the CUDA stream; the CPU has none.
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.empty_cache = lambda: None
    # The RNG tracker keeps per-region CUDA generator states (dropout in TP regions);
    # on the CPU those states are the CPU generator's.
    mcore_random._get_cuda_rng_state = _cpu_rng_state
    mcore_random._set_cuda_rng_state = _set_cpu_rng_state
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    # The tracker warns when the CPU generator moves inside a CUDA-RNG region; here the two
    # generators are one, so the warning would fire on every dropout and mean nothing.
    logging.getLogger(mcore_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage())
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    torch.cuda.manual_seed_all = lambda seed: None
    # Activation recompute re-runs forward code inside backward. torch runs a mode's handler
    # with the mode popped, so during torch.autograd.backward the remapping is off: turn it
    # back on for the recomputed forward.
    recompute_backward = mcore_random.CheckpointFunction.backward

    def backward_with_remapping(ctx, *grads):
        with _CudaToCpuMode():
            return recompute_backward(ctx, *grads)

    mcore_random.CheckpointFunction.backward = staticmethod(backward_with_remapping)
    # Entered once for the life of the process.
    _CudaToCpuMode().__enter__()
    _installed = True


def install_if_needed() -> bool:
    """Install the shim when this machine has no CUDA. Returns whether it is active."""
    if torch.cuda.is_available():
        return False
    install()
    return True
