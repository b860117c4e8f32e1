"""Weight initialization that does not depend on the parallel layout.

Each weight is drawn in full from a generator seeded by (seed, global name) and then sliced
for this rank, so the same ``--seed`` gives the same model at every TP/PP/VP layout: a
layout change never changes the results. Distribution as in Qwen's reference code: normal(0,
std) for embeddings and input projections, std / sqrt(2 * layers) for the projections that
write back into the residual stream, zero biases, unit norms.

Where the draw runs: on the device that holds the parameter. On the CPU that is the CPU's
generator, whose values every CPU run, test and checkpoint of this project was made with. On a
GPU it is a CUDA generator seeded the same way: every tensor-parallel rank still draws each
full weight, but at GPU speed (a 72B model in seconds per rank instead of the tens of minutes
the CPU takes; bench/bench_init.py). CUDA draws differ from CPU draws, and torch's CUDA kernels
size their launch grid by the GPU's multiprocessor count, so they are layout-independent and
reproducible on one GPU model, not across models. ``device="cpu"`` reproduces a CPU run's
weights on a GPU.
"""

import math
import zlib

import torch
from megatron.core import parallel_state

from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.model.layout import global_param_names, is_norm, shard

_RESIDUAL_OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def full_shape(param, tp_size: int) -> list[int]:
    """The shape of ``param`` in the single-process model."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return shape


def draw_full(global_name: str, shape: list[int], cfg: QwenModelConfig, seed: int,
              device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """The full fp32 tensor of ``global_name``: the same for every rank and layout."""
    if is_norm(global_name):
        return torch.ones(shape, device=device)
    if global_name.endswith(".bias"):
        return torch.zeros(shape, device=device)
    std = cfg.init_method_std
    if global_name.endswith(_RESIDUAL_OUTPUT_PROJECTIONS):
        std /= math.sqrt(2.0 * cfg.num_layers)
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(global_name.encode()))
    return torch.empty(shape, device=device).normal_(0.0, std, generator=gen)


def rank_slice(param, global_name: str, cfg: QwenModelConfig, seed: int, tp_rank: int, tp_size: int,
               device: torch.device) -> torch.Tensor:
    """The part of ``global_name``'s full draw that ``param`` (this rank's shard) holds."""
    full = draw_full(global_name, full_shape(param, tp_size), cfg, seed, device)
    return shard(full, global_name, param, tp_rank, tp_size)


@torch.no_grad()
def initialize_weights(model_chunks, cfg: QwenModelConfig, seed: int, device: torch.device | None = None) -> None:
    """Draw every parameter of this rank's chunks; on each parameter's own device unless ``device``."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    for chunk in model_chunks:
        names = global_param_names(chunk)
        for name, param in chunk.named_parameters():
            param.copy_(rank_slice(param, names[name], cfg, seed, tp_rank, tp_size, device or param.device))
