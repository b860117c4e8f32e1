"""Where each weight of the full model lives on a tensor-parallel rank.

A *global name* identifies a weight independently of the parallel layout:
``decoder.layers.{global_index}.<...>`` with the layer's index in the whole model, and the
transformer-engine spelling of the norms folded onto the local one. The *full* tensor of a
global name is the one a single-process (TP=1) megatron-core model holds. This module maps
between full tensors and the slice that one tensor-parallel rank keeps; layout-independent
initialization, the parity tests and checkpoint conversion all go through it.
"""

import re

import torch

# transformer-engine fuses the pre-attention and pre-MLP norms into the next linear layer; the
# local spec keeps them as modules. The one table of both spellings: local prefix -> TE prefix.
TE_NORM_PREFIXES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")  # (layer index, name inside the layer)


def is_norm(global_name: str) -> bool:
    """RMSNorm weights: input_layernorm, pre_mlp_layernorm and the final layernorm."""
    return global_name.endswith("layernorm.weight")


def _local_spelling(name_in_layer: str) -> str:
    for local, te in TE_NORM_PREFIXES.items():
        if name_in_layer.startswith(te):
            return local + name_in_layer.removeprefix(te)
    return name_in_layer


def global_param_names(model_chunk) -> dict[str, str]:
    """Map each parameter name of a GPTModel chunk to its layout-independent global name."""
    local_to_global_layer = {
        i: layer.layer_number - 1 for i, layer in enumerate(model_chunk.decoder.layers)
    }
    names = {}
    for name, _ in model_chunk.named_parameters():
        m = LAYER_NAME.match(name)
        if m is None:
            names[name] = name
            continue
        names[name] = f"decoder.layers.{local_to_global_layer[int(m.group(1))]}.{_local_spelling(m.group(2))}"
    return names


def is_gated_fc1(global_name: str) -> bool:
    """SwiGLU's fc1 stacks [gate; up]; each TP rank keeps [gate_r; up_r], not a plain chunk."""
    return global_name.endswith("mlp.linear_fc1.weight")


def shard(full: torch.Tensor, global_name: str, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's slice of ``full`` for the parameter ``param`` (which carries megatron's
    ``tensor_model_parallel`` and ``partition_dim`` attributes)."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    if is_gated_fc1(global_name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp_size, dim)[tp_rank], up.chunk(tp_size, dim)[tp_rank]], dim)
    return full.chunk(tp_size, dim)[tp_rank]


def unshard(shards: list[torch.Tensor], global_name: str, partition_dim: int | None) -> torch.Tensor:
    """Inverse of ``shard``: the full tensor from every TP rank's slice (in rank order)."""
    if partition_dim is None or len(shards) == 1:
        return shards[0]
    if is_gated_fc1(global_name):
        halves = [s.chunk(2, partition_dim) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], partition_dim)
    return torch.cat(shards, partition_dim)
