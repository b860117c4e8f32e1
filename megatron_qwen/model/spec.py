"""The Qwen layer, expressed as megatron-core ModuleSpecs.

Qwen differs from megatron-core's stock GPT layer only in its choice of components, which the
TransformerConfig (RMSNorm, SwiGLU, bias on QKV only) and the specs below select: no subclass
of any megatron-core module is needed.

Four back ends, chosen once at build time:
- ``te``: transformer-engine's fused modules (GPU with transformer-engine installed);
- ``flash``: megatron-core's local modules with flash-attn core attention (GPU without TE);
- ``sdpa``: megatron-core's local modules with PyTorch's fused attention (any GPU, nothing to install);
- ``local``: megatron-core's local modules with its unfused torch attention (CPU, the reference).
"""

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_qwen.model.attention import FlashSelfAttention, SDPASelfAttention
from megatron_qwen.model.layout import TE_NORM_PREFIXES
from megatron_qwen.model.norm import QwenRMSNorm
from megatron_qwen.model.rope import UpcastForRope, downcast_after_rope
from megatron_qwen.platform.backends import BACKENDS


def _local_layer_spec(core_attention: type, fused_norm: bool) -> ModuleSpec:
    norm = _norm_spec(fused_norm)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    # the back end, after the inference-only long-context stage (model/long_context.py)
                    core_attention=downcast_after_rope(core_attention),
                    linear_proj=RowParallelLinear,
                    # query and key through RoPE in fp32, as Qwen rotates them (model/rope.py)
                    q_layernorm=UpcastForRope,
                    k_layernorm=UpcastForRope,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
            # Same checkpoint keys as the transformer-engine layer, where the norms are fused
            # into the following linear layers: checkpoints move between back ends.
            sharded_state_dict_keys_map=dict(TE_NORM_PREFIXES),
        ),
    )


def _norm_spec(fused: bool) -> ModuleSpec:
    return ModuleSpec(module=QwenRMSNorm, params={"fused": fused})


def qwen_layer_spec(backend: str, fused_norm: bool = False) -> ModuleSpec:
    """One layer on ``backend``; ``fused_norm``: the local specs' RMSNorm as one compiled kernel (GPU)."""
    if backend == "te":
        return get_gpt_layer_with_transformer_engine_spec()
    if backend == "flash":
        return _local_layer_spec(FlashSelfAttention, fused_norm)
    if backend == "sdpa":
        return _local_layer_spec(SDPASelfAttention, fused_norm)
    if backend == "local":
        return _local_layer_spec(DotProductAttention, fused_norm)
    raise ValueError(f"unknown --transformer-impl {backend!r}; choose one of {', '.join(BACKENDS)}")


def qwen_block_spec(backend: str, num_layers_in_chunk: int, fused_norm: bool = False) -> ModuleSpec:
    """The decoder block of one pipeline chunk: its layers and, on the last stage, the final norm. The final
    norm is ours on every back end: transformer-engine's norm carries an ``_extra_state`` (FP8 metadata) that
    ours does not, and megatron-core's loader accepts no missing key, so with it a checkpoint of any other
    back end (or imported from Hugging Face) would not load on transformer-engine (docs/checkpoints.md)."""
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(
            layer_specs=[qwen_layer_spec(backend, fused_norm)] * num_layers_in_chunk, layer_norm=_norm_spec(fused_norm)
        ),
    )
