"""Fused core attention for the local (non transformer-engine) layer spec.

megatron-core's local ``DotProductAttention`` materializes the full [b, heads, s, s] score
matrix in the activation dtype. Two drop-in replacements, with its constructor and forward
contract so the layer spec swaps one for the other:

- ``SDPASelfAttention``: ``torch.nn.functional.scaled_dot_product_attention``, i.e. PyTorch's own
  flash / memory-efficient / cuDNN kernels on a GPU (nothing to install) and a plain kernel on
  the CPU. It honours an explicit mask, so packed SFT samples keep their block-diagonal attention.
- ``FlashSelfAttention``: the flash-attn package (GPU only, fp16 and bf16), causal attention without
  masks; packed SFT samples come as megatron-core's THD layout (PackedSeqParams, model/packing.py) and
  run through flash-attn's varlen kernel, each conversation attending within itself.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

try:
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # CPU machines: the spec never selects this module there
    flash_attn_func = flash_attn_varlen_func = None


class _FusedSelfAttention(MegatronModule):
    """What both kernels share: megatron-core's constructor arguments and the [s, b, heads, dim]
    layout; subclasses compute attention on [b, heads, s, dim] (sdpa) or [b, s, heads, dim]."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("--context-parallel-size > 1 needs transformer-engine attention")
        self.causal = attn_mask_type == AttnMaskType.causal
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError(f"{type(self).__name__} does not support attention bias")
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0 and not self.config.sequence_parallel:
            # Heads are split over tensor-parallel ranks: each rank drops with its own RNG stream,
            # as megatron-core's local attention does.
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = self._attend(query, key, value, attention_mask, dropout_p, packed_seq_params)
        else:
            out = self._attend(query, key, value, attention_mask, dropout_p, packed_seq_params)
        return out.flatten(-2)  # heads x dim -> the hidden size: [s, b, h], or [t, h] in the THD layout

    def _attend(self, query, key, value, attention_mask, dropout_p, packed_seq_params) -> torch.Tensor:
        """[s, b, heads, dim] inputs -> [s, b, heads, dim] output; with ``packed_seq_params``, megatron-core's
        THD layout: [t, heads, dim] -> [t, heads, dim]."""
        raise NotImplementedError


class SDPASelfAttention(_FusedSelfAttention):
    def _attend(self, query, key, value, attention_mask, dropout_p, packed_seq_params):
        if packed_seq_params is not None:
            raise ValueError("SDPASelfAttention takes packed samples as a block-diagonal mask, not PackedSeqParams "
                             "(platform/backends.py: PACKED_SEQUENCE_FORM)")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # -> [b, heads, s, dim]
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal,
                                                 scale=self.softmax_scale)
        else:  # megatron-core's mask: True = masked out; sdpa's boolean mask: True = attend
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, dropout_p=dropout_p,
                                                 scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3)


class FlashSelfAttention(_FusedSelfAttention):
    def __init__(self, config: TransformerConfig, *args, **kwargs):
        if flash_attn_func is None:
            raise ImportError("FlashSelfAttention needs the flash-attn package (pip install flash-attn)")
        super().__init__(config, *args, **kwargs)

    def _attend(self, query, key, value, attention_mask, dropout_p, packed_seq_params):
        if attention_mask is not None:
            raise ValueError("FlashSelfAttention takes no attention mask: packed samples come as PackedSeqParams "
                             "(model/packing.py), anything else is causal")
        if packed_seq_params is not None:  # [t, heads, dim], each segment attending within itself
            p = packed_seq_params
            return flash_attn_varlen_func(query, key, value, p.cu_seqlens_q, p.cu_seqlens_kv, p.max_seqlen_q,
                                          p.max_seqlen_kv, dropout_p=dropout_p, softmax_scale=self.softmax_scale,
                                          causal=self.causal)
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # -> [b, s, heads, dim]
        out = flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=self.softmax_scale, causal=self.causal)
        return out.transpose(0, 1)
