"""Stand-ins for the attention kernels that need CUDA, written with PyTorch's sdpa (tests only).

- ``flash_attn_stub`` and ``flash_attn_varlen_stub``: flash-attn's ``flash_attn_func`` and
  ``flash_attn_varlen_func`` under their calling conventions ([batch, seq, heads, dim]; THD rows
  delimited by cu_seqlens). Like the real kernels they refuse fp32 and compute in fp32 inside, rounding the
  output to the input's dtype once.
- ``SegmentedSDPAAttention``: a core attention for the layer spec that takes packed samples in megatron-core's
  THD layout (PackedSeqParams) in any precision, fp32 included: what a varlen kernel computes, segment by
  segment. With it, the THD path of a packed batch (the training step's one-row micro-batch, megatron-core's
  THD RoPE) runs on the CPU in fp32 and compares exactly with the mask path.
"""

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

FLASH_DTYPES = (torch.float16, torch.bfloat16)


def segmented_sdpa(q, k, v, cu_seqlens: torch.Tensor, softmax_scale=None) -> torch.Tensor:
    """Causal attention within each segment of a THD row: [t, heads, dim] in, [t, heads, dim] out (fp32 inside)."""
    bounds = cu_seqlens.tolist()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        segment = [t[start:end].transpose(0, 1).float() for t in (q, k, v)]  # [heads, n, dim]
        out.append(F.scaled_dot_product_attention(*segment, is_causal=True, scale=softmax_scale).transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def _refuse_fp32(q: torch.Tensor) -> None:
    if q.dtype not in FLASH_DTYPES:  # flash-attn's own message
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")


def flash_attn_stub(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    _refuse_fp32(q)
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)), dropout_p=dropout_p,
                                         is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(q.dtype)


def flash_attn_varlen_stub(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False):
    _refuse_fp32(q)
    assert causal and dropout_p == 0.0 and torch.equal(cu_seqlens_q, cu_seqlens_k)
    assert cu_seqlens_q.dtype == torch.int32 and max_seqlen_q == int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    return segmented_sdpa(q, k, v, cu_seqlens_q, softmax_scale)


class SegmentedSDPAAttention(MegatronModule):
    """A core attention with megatron-core's constructor and forward: causal, and for packed samples
    (PackedSeqParams, THD) causal within each segment. Dropout and masks are refused: not what it stands for."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, **_):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        assert attention_mask is None and attention_bias is None and self.config.attention_dropout == 0
        if packed_seq_params is None:  # [s, b, heads, dim]: each sample is one segment
            s, b = query.shape[:2]
            rows = [segmented_sdpa(*(t[:, i] for t in (query, key, value)), torch.tensor([0, s]), self.softmax_scale)
                    for i in range(b)]
            return torch.stack(rows, dim=1).flatten(-2)
        return segmented_sdpa(query, key, value, packed_seq_params.cu_seqlens_q, self.softmax_scale).flatten(-2)
