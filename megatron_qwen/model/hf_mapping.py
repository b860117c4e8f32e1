"""Full (TP=1) megatron-core weights of a Qwen model <-> Hugging Face ``Qwen2ForCausalLM`` names.

A Qwen-1 checkpoint maps one-to-one onto transformers' Qwen2 layout (SPEC.md section 1):
separate q/k/v projections with bias, gate/up/down MLP, untied embedding and lm_head.
megatron-core differs in two places only: the QKV weight interleaves the heads
([q_h, k_h, v_h] per head) and fc1 stacks [gate; up].
"""

import re

import torch

from megatron_qwen.config.model import QwenModelConfig

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_SAME_SHAPE = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_TOP = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}


def _split_qkv(t: torch.Tensor, cfg: QwenModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per_head = t.reshape(cfg.num_attention_heads, 3, cfg.head_dim, *t.shape[1:])
    return tuple(per_head[:, i].reshape(cfg.hidden_size, *t.shape[1:]) for i in range(3))


def to_hf_qwen2(full: dict[str, torch.Tensor], cfg: QwenModelConfig) -> dict[str, torch.Tensor]:
    """megatron-core global names (see model/layout.py) -> Qwen2ForCausalLM state dict."""
    hf = {}
    for name, t in full.items():
        if name in _TOP:
            hf[_TOP[name]] = t
            continue
        m = _LAYER.match(name)
        if m is None:
            raise KeyError(f"no Hugging Face name for {name}")
        pre, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest in _SAME_SHAPE:
            hf[pre + _SAME_SHAPE[rest]] = t
        elif rest.startswith("self_attention.linear_qkv."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(t, cfg)):
                hf[f"{pre}self_attn.{proj}.{kind}"] = part
        elif rest == "mlp.linear_fc1.weight":
            gate, up = t.chunk(2, dim=0)
            hf[pre + "mlp.gate_proj.weight"], hf[pre + "mlp.up_proj.weight"] = gate, up
        else:
            raise KeyError(f"no Hugging Face name for {name}")
    return hf
