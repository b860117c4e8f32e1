"""RoPE rotated in fp32 on the local layer spec, as Qwen rotates it.

megatron-core's unfused rotation (``rope_utils._apply_rotary_pos_emb_bshd``, taken by the local,
sdpa and flash back ends) casts cos and sin to the activation dtype and rotates in it: in bf16
runs, in bf16. Qwen's reference code rotates query and key in fp32 and rounds the result once;
so does transformer-engine's fused RoPE kernel (fp32 sin, cos and arithmetic, one cast on the
store), which the te back end uses.

Two slots of megatron-core's attention spec give the local spec the same without changing any
megatron-core module: ``SelfAttention`` applies ``q_layernorm`` and ``k_layernorm`` to query and
key right before the rotation, so ``UpcastForRope`` there makes the rotation run in fp32, and
``downcast_after_rope`` wraps the core attention to round query and key back to the value's
dtype. In fp32 runs both are the identity (``.float()`` and ``.to()`` return the tensor itself),
so fp32 results are bit-identical with or without them.

The rotated query and key pass the inference-only long-context stage (model/long_context.py) before
the cast: dynamic NTK rotates them on in fp32, as Qwen rotates. The stage is the identity unless an
eval-mode model switches it on.
"""

from functools import partial

import torch

from megatron_qwen.model.long_context import LongContextStage


class UpcastForRope(torch.nn.Module):
    """Sits in the q/k-layernorm slot: query or key to fp32, so the rotation after it is fp32."""

    def __init__(self, **_):  # built like a norm (hidden_size, config, eps); it needs none of them
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class _DowncastAfterRope(torch.nn.Module):
    """The back end's core attention, fed the rotated query and key (through the long-context stage)
    in the value's dtype."""

    def __init__(self, core_attention: type, **kwargs):
        super().__init__()
        self.long_context = LongContextStage(kwargs["layer_number"])
        self.inner = core_attention(**kwargs)

    def forward(self, query, key, value, attention_mask, *args, **kwargs):
        query, key, attention_mask = self.long_context(query, key, attention_mask)
        return self.inner(query.to(value.dtype), key.to(value.dtype), value, attention_mask, *args, **kwargs)


def downcast_after_rope(core_attention: type):
    """The core-attention entry of the spec: megatron-core calls it with the core attention's
    keyword arguments (it calls the entry directly, so it must be a callable, not a ModuleSpec)."""
    return partial(_DowncastAfterRope, core_attention)
