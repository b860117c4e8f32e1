"""Weight initialization that does not depend on the parallel layout.

Each weight is drawn in full from a generator seeded by (seed, global name) and then sliced
for this rank, so the same ``--seed`` gives the same model at every TP/PP/VP layout: a
layout change never changes the results. Distribution as in Qwen's reference code: normal(0,
std) for embeddings and input projections, std / sqrt(2 * layers) for the projections that
write back into the residual stream, zero biases, unit norms.
"""

import math
import zlib

import torch
from megatron.core import parallel_state

from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.model.layout import global_param_names, is_norm, shard

_RESIDUAL_OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _full_shape(param, global_name: str, tp_size: int) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return shape


def _draw_full(global_name: str, shape: list[int], cfg: QwenModelConfig, seed: int) -> torch.Tensor:
    if is_norm(global_name):
        return torch.ones(shape)
    if global_name.endswith(".bias"):
        return torch.zeros(shape)
    std = cfg.init_method_std
    if global_name.endswith(_RESIDUAL_OUTPUT_PROJECTIONS):
        std /= math.sqrt(2.0 * cfg.num_layers)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(global_name.encode()))
    return torch.empty(shape).normal_(0.0, std, generator=gen)


@torch.no_grad()
def initialize_weights(model_chunks, cfg: QwenModelConfig, seed: int) -> None:
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    for chunk in model_chunks:
        names = global_param_names(chunk)
        for name, param in chunk.named_parameters():
            gname = names[name]
            full = _draw_full(gname, _full_shape(param, gname, tp_size), cfg, seed)
            param.copy_(shard(full, gname, param, tp_rank, tp_size))
