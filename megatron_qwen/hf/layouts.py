"""Hugging Face's two layouts of the Qwen-1 network: tensor names, config.json as written, conversions.

``qwen``: the remote-code ``QWenLMHeadModel`` of Qwen's published checkpoints (docs/qwen.md
section 1): fused ``attn.c_attn`` (q|k|v row blocks, with bias), ``mlp.w2`` the gate and
``mlp.w1`` the up projection, ``intermediate_size`` twice the FFN width.
``qwen2``: transformers' built-in ``Qwen2ForCausalLM``, the same network with separate q/k/v and
gate/up/down projections; it loads without remote code. A reward model (model/reward.py) goes out as its
``Qwen2ForSequenceClassification`` with one label: our head is its ``score`` (qwen2 only; Qwen-1's remote code
has no such class).

Our side is the full (TP=1) megatron-core tensor of each layout-independent global name
(model/layout.py). It differs from both layouts in two places: the QKV weight interleaves the
heads ([q_h; k_h; v_h] per head) and fc1 stacks [gate; up].
"""

from dataclasses import dataclass

import torch

from megatron_qwen.checkpointing.resolver import LAYOUTS
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.model.layout import LAYER_NAME, is_gated_fc1
from megatron_qwen.tokenizer.qwen import ENDOFTEXT, SPECIAL_TOKENS

REWARD_ARCHITECTURE = "Qwen2ForSequenceClassification"


@dataclass(frozen=True)
class Piece:
    """Where one part of one of our tensors lives in a Hugging Face checkpoint: row block
    ``block`` of ``blocks`` equal row blocks of the tensor ``name`` (Qwen-1's c_attn holds q, k
    and v as three blocks; every other piece is a whole tensor)."""

    name: str
    block: int = 0
    blocks: int = 1


# Per layer: our name inside the layer -> its pieces, in the order our tensor stacks them
# (q, k, v for QKV; gate, up for fc1). "{}" is the HF layer prefix.
_LAYER_PIECES = {
    "qwen": {
        "input_layernorm.weight": ["{}ln_1.weight"],
        "self_attention.linear_qkv.weight": [("{}attn.c_attn.weight", 3)],
        "self_attention.linear_qkv.bias": [("{}attn.c_attn.bias", 3)],
        "self_attention.linear_proj.weight": ["{}attn.c_proj.weight"],
        "pre_mlp_layernorm.weight": ["{}ln_2.weight"],
        "mlp.linear_fc1.weight": ["{}mlp.w2.weight", "{}mlp.w1.weight"],  # w2 is the gate
        "mlp.linear_fc2.weight": ["{}mlp.c_proj.weight"],
    },
    "qwen2": {
        "input_layernorm.weight": ["{}input_layernorm.weight"],
        "self_attention.linear_qkv.weight": ["{}self_attn.q_proj.weight", "{}self_attn.k_proj.weight",
                                             "{}self_attn.v_proj.weight"],
        "self_attention.linear_qkv.bias": ["{}self_attn.q_proj.bias", "{}self_attn.k_proj.bias",
                                           "{}self_attn.v_proj.bias"],
        "self_attention.linear_proj.weight": ["{}self_attn.o_proj.weight"],
        "pre_mlp_layernorm.weight": ["{}post_attention_layernorm.weight"],
        "mlp.linear_fc1.weight": ["{}mlp.gate_proj.weight", "{}mlp.up_proj.weight"],
        "mlp.linear_fc2.weight": ["{}mlp.down_proj.weight"],
    },
}
_LAYER_PREFIX = {"qwen": "transformer.h.{}.", "qwen2": "model.layers.{}."}
_TOP_NAMES = {
    "qwen": {"embedding.word_embeddings.weight": "transformer.wte.weight",
             "decoder.final_layernorm.weight": "transformer.ln_f.weight", "output_layer.weight": "lm_head.weight"},
    "qwen2": {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
              "decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight",
              "reward_head.weight": "score.weight"},
}
# Buffers some checkpoints carry that the config already determines; they are skipped on import.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"--hf-layout {layout!r} is unknown; choose qwen (Qwen-1 remote-code names, as "
                          "published) or qwen2 (transformers' Qwen2ForCausalLM, no remote code)")
    return layout


def global_weight_shapes(cfg: QwenModelConfig, head: str = "lm") -> dict[str, tuple[int, ...]]:
    """Every weight of the full (TP=1) model by global name, in the order of the network; ``head`` "reward":
    the reward model's (config/model.py's BuildSettings.head)."""
    h, ffn, rows = cfg.hidden_size, cfg.ffn_hidden_size, cfg.padded_vocab_size
    attn = cfg.num_attention_heads * cfg.head_dim
    layer = {
        "input_layernorm.weight": (h,),
        "self_attention.linear_qkv.weight": (3 * attn, h),
        "self_attention.linear_qkv.bias": (3 * attn,),
        "self_attention.linear_proj.weight": (h, attn),
        "pre_mlp_layernorm.weight": (h,),
        "mlp.linear_fc1.weight": (2 * ffn, h),
        "mlp.linear_fc2.weight": (h, ffn),
    }
    shapes = {"embedding.word_embeddings.weight": (rows, h)}
    for i in range(cfg.num_layers):
        shapes.update({f"decoder.layers.{i}.{k}": v for k, v in layer.items()})
    shapes["decoder.final_layernorm.weight"] = (h,)
    if head == "reward":
        shapes["reward_head.weight"] = (1, h)
    else:
        shapes["output_layer.weight"] = (rows, h)
    return shapes


def pieces(global_name: str, layout: str) -> list[Piece]:
    """The Hugging Face pieces of one of our tensors, in the order our tensor stacks them."""
    if global_name in _TOP_NAMES[layout]:
        return [Piece(_TOP_NAMES[layout][global_name])]
    m = LAYER_NAME.match(global_name)
    if m is None or m.group(2) not in _LAYER_PIECES[layout]:
        raise KeyError(f"no Hugging Face name for {global_name}")
    prefix = _LAYER_PREFIX[layout].format(m.group(1))
    out = []
    for entry in _LAYER_PIECES[layout][m.group(2)]:
        name, blocks = entry if isinstance(entry, tuple) else (entry, 1)
        out += [Piece(name.format(prefix), i, blocks) for i in range(blocks)]
    return out


def _is_qkv(global_name: str) -> bool:
    return ".self_attention.linear_qkv." in global_name


def to_ours(global_name: str, parts: list[torch.Tensor], head_dim: int) -> torch.Tensor:
    """Our tensor (full, or one TP rank's slice) from its pieces (full, or that rank's slices)."""
    if _is_qkv(global_name):
        heads = parts[0].shape[0] // head_dim
        per_head = [p.reshape(heads, head_dim, *p.shape[1:]) for p in parts]
        return torch.stack(per_head, dim=1).reshape(3 * heads * head_dim, *parts[0].shape[1:])
    if is_gated_fc1(global_name):
        return torch.cat(parts, dim=0)
    (whole,) = parts
    return whole


def to_hf(global_name: str, full: torch.Tensor, head_dim: int) -> list[torch.Tensor]:
    """Inverse of to_ours on a full tensor: its pieces, in the order of ``pieces``."""
    if _is_qkv(global_name):
        per_head = full.reshape(-1, 3, head_dim, *full.shape[1:])
        return [per_head[:, i].reshape(-1, *full.shape[1:]) for i in range(3)]
    if is_gated_fc1(global_name):
        return list(full.chunk(2, dim=0))
    return [full]


def hf_shapes(cfg: QwenModelConfig, layout: str, head: str = "lm") -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this model holds, with its shape, in file order."""
    shapes = {}
    for gname, shape in global_weight_shapes(cfg, head).items():
        parts = to_hf(gname, torch.empty(shape, device="meta"), cfg.head_dim)
        for piece, part in zip(pieces(gname, layout), parts):
            shapes[piece.name] = (part.shape[0] * piece.blocks, *part.shape[1:])
    return shapes


def to_hf_state_dict(full: dict[str, torch.Tensor], cfg: QwenModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """Full tensors by global name -> a Hugging Face state dict of ``layout``."""
    blocks: dict[str, list] = {}
    for gname, tensor in full.items():
        for piece, part in zip(pieces(gname, layout), to_hf(gname, tensor, cfg.head_dim)):
            blocks.setdefault(piece.name, []).append(part)
    return {name: parts[0] if len(parts) == 1 else torch.cat(parts, dim=0) for name, parts in blocks.items()}


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # --dtype's names
_TORCH_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def hf_config(cfg: QwenModelConfig, layout: str, dtype: torch.dtype, seq_length: int, head: str = "lm") -> dict:
    """config.json of ``cfg`` in ``layout``: Qwen-1's published keys, or transformers' Qwen2Config keys.
    ``seq_length``: the length the run trained at (Qwen-1's seq_length, where NTK and LogN begin); the
    position limit is the model's max_position_embeddings. ``head`` "reward": Qwen2ForSequenceClassification
    with one label, pooling at the last token that is not <|endoftext|> (the padding), which on our sequences
    is the end token the reward is read at (docs/qwen.md section 11)."""
    common = {"architectures": [LAYOUTS[layout]], "model_type": layout, "hidden_size": cfg.hidden_size,
              "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
              "vocab_size": cfg.padded_vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
              "tie_word_embeddings": False, "initializer_range": cfg.init_method_std, "use_cache": True,
              "torch_dtype": _TORCH_DTYPE_NAMES[dtype]}
    if layout == "qwen":
        return {**common, "kv_channels": cfg.head_dim, "intermediate_size": 2 * cfg.ffn_hidden_size,
                "layer_norm_epsilon": cfg.norm_epsilon, "rotary_emb_base": cfg.rotary_base, "rotary_pct": 1.0,
                "seq_length": seq_length, "no_bias": True, "emb_dropout_prob": 0.0,
                "attn_dropout_prob": 0.0, "scale_attn_weights": True, "softmax_in_fp32": False,
                # Qwen's remote code: dynamic NTK and LogN past seq_length (docs/long_context.md); it has
                # no window attention.
                "use_dynamic_ntk": True, "use_logn_attn": True, "use_flash_attn": "auto",
                # All false, as published: the remote code then picks the precision from the device (bf16 on a
                # GPU with bf16, else fp16 on a GPU with fp16, else fp32), whatever torch_dtype says, unless
                # the user passes bf16/fp16/fp32=True (docs/checkpoints.md).
                "bf16": False, "fp16": False, "fp32": False,
                "tokenizer_class": "QWenTokenizer",
                "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                             "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}}
    head_dim = {"head_dim": cfg.head_dim} if cfg.kv_channels is not None else {}
    # Plain RoPE and full attention: transformers' "dynamic" rope_scaling is another formula than Qwen-1's
    # NTK, it has no LogN, and its sliding window is one size on the upper layers (docs/long_context.md).
    reward = ({"architectures": [REWARD_ARCHITECTURE], "num_labels": 1, "pad_token_id": SPECIAL_TOKENS[ENDOFTEXT]}
              if head == "reward" else {})
    return {**common, **head_dim, "num_key_value_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.ffn_hidden_size, "rms_norm_eps": cfg.norm_epsilon,
            "rope_theta": float(cfg.rotary_base), "rope_scaling": None, "hidden_act": "silu",
            "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": cfg.num_layers, "bos_token_id": None, "eos_token_id": SPECIAL_TOKENS[ENDOFTEXT],
            **reward}
