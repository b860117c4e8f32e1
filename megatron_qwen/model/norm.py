"""RMSNorm that works with sequence parallelism without apex or transformer-engine."""

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class QwenRMSNorm(torch.nn.Module):
    """``x / rms(x) * weight``, computed in fp32 like Qwen's reference implementation.

    With sequence parallelism each tensor-parallel rank normalizes its own slice of the
    sequence, so the weight's gradient is partial on each rank. Marking the weight
    ``sequence_parallel`` makes megatron-core's grad finalization all-reduce it over the
    tensor-parallel group. (megatron-core's torch norm wrapper refuses sequence parallelism.)
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight
