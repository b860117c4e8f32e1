"""Core attention on flash-attn for the local (non transformer-engine) layer spec.

megatron-core's local ``DotProductAttention`` materializes the full score matrix; on a GPU
without transformer-engine this module calls flash-attn instead. Same constructor and forward
contract as ``DotProductAttention``, so the layer spec can swap one for the other.
"""

from typing import Optional

from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

try:
    from flash_attn import flash_attn_func
except ImportError:  # CPU machines: the spec never selects this module there
    flash_attn_func = None


class FlashSelfAttention(MegatronModule):
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
        if flash_attn_func is None:
            raise ImportError("FlashSelfAttention needs the flash-attn package (pip install flash-attn)")
        if config.context_parallel_size != 1:
            raise ValueError("--context-parallel-size > 1 needs transformer-engine attention")
        self.causal = attn_mask_type == AttnMaskType.causal
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("FlashSelfAttention supports neither packed sequences nor attention bias")
        # megatron-core hands [s, b, heads, head_dim]; flash-attn wants [b, s, heads, head_dim].
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))
        out = flash_attn_func(
            q, k, v,
            dropout_p=self.dropout_p if self.training else 0.0,
            softmax_scale=self.softmax_scale,
            causal=self.causal,
        )
        s, b = query.shape[0], query.shape[1]
        return out.transpose(0, 1).reshape(s, b, -1)
