"""RMSNorm that works with sequence parallelism without apex or transformer-engine."""

import functools

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` in fp32, rounded to x's dtype before the weight, as Qwen's reference code."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


@functools.cache
def compiled_rms_norm():
    """Eager, the norm is six passes over the activation, two of them in fp32, and autograd keeps the
    fp32 intermediates; compiled, it is one kernel forward and one backward. Compiling happens at the
    first call (seconds on a GPU; the builder never selects it on the CPU, where it takes minutes)."""
    return torch.compile(rms_norm)


class QwenRMSNorm(torch.nn.Module):
    """Qwen's RMSNorm; ``fused``: the same arithmetic as one compiled kernel (``--no-rmsnorm-fusion``).

    With sequence parallelism each tensor-parallel rank normalizes its own slice of the
    sequence, so the weight's gradient is partial on each rank. Marking the weight
    ``sequence_parallel`` makes megatron-core's grad finalization all-reduce it over the
    tensor-parallel group. (megatron-core's torch norm wrapper refuses sequence parallelism.)
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, fused: bool = False, **_):
        super().__init__()
        self.eps = eps
        self.norm = compiled_rms_norm() if fused else rms_norm
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x, self.weight, self.eps)
