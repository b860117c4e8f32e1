"""Where the conversations of a packed SFT sample begin and end, and the two forms attention takes that in.

A packed sample (data/sft.py) is described once, by ``cu_seqlens``: the offset at which each segment
begins (each conversation, and the padding after the last one, which is a segment of its own), then the
sample's length, then -1 up to ``seq_length + 1`` entries, so that samples stack into a micro-batch.
A sample that holds one conversation needs no description (None): causal attention is already right,
since no token before the padding can see the padding.

From that one description, per micro-batch of b samples of s tokens:
- ``attention_mask``: the block-diagonal causal mask [b, 1, s, s] (True: masked out) that the local and
  sdpa back ends take;
- ``packed_seq_params``: megatron-core's PackedSeqParams in the THD layout that transformer-engine and
  flash-attn's varlen kernel take: the b samples as one row of b x s tokens whose segments ``cu_seqlens``
  delimits.
Which form a back end takes: platform/backends.py. RoPE takes no positions from either: megatron-core
rotates THD segments from position 0, and under the mask a segment rotates from its offset in the sample,
which leaves every score within the segment what it is from position 0 (RoPE is relative).
"""

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def describe_segments(lengths: list[int], seq_length: int) -> torch.Tensor:
    """The ``cu_seqlens`` of one sample holding segments of ``lengths`` tokens from position 0 on; the rest
    of the sample, if any, is padding: one more segment."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    if starts[-1] < seq_length:
        starts.append(seq_length)
    out = torch.full((seq_length + 1,), -1, dtype=torch.int32)
    out[:len(starts)] = torch.tensor(starts, dtype=torch.int32)
    return out


def segment_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[b, s]: the index of the segment each position of each sample belongs to."""
    b, s = cu_seqlens.shape[0], cu_seqlens.shape[1] - 1
    ends = cu_seqlens[:, 1:].long()
    ends = torch.where(ends < 0, s, ends).contiguous()  # the -1 fill: empty segments after the last
    positions = torch.arange(s, device=cu_seqlens.device).expand(b, s).contiguous()
    return torch.searchsorted(ends, positions, right=True)


def attention_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The block-diagonal causal mask of a micro-batch, [b, 1, s, s], True where attention is masked out
    (megatron-core's convention)."""
    s = cu_seqlens.shape[1] - 1
    segment = segment_ids(cu_seqlens)
    causal = torch.ones(s, s, dtype=torch.bool, device=cu_seqlens.device).tril()
    allowed = causal & (segment[:, :, None] == segment[:, None, :])
    return (~allowed).unsqueeze(1)


def packed_seq_params(cu_seqlens: torch.Tensor) -> PackedSeqParams:
    """The micro-batch as one THD row of b x s tokens: every sample's segments, in order."""
    b, s = cu_seqlens.shape[0], cu_seqlens.shape[1] - 1
    ends = cu_seqlens[:, 1:]
    offsets = torch.arange(b, device=cu_seqlens.device, dtype=ends.dtype).unsqueeze(1) * s
    row = (ends + offsets)[ends >= 0]  # row-major: sample 0's segment ends, then sample 1's, ...
    cu = torch.cat([row.new_zeros(1), row]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)
