"""Hugging Face helpers shared by the tests: transformers' Qwen2ForCausalLM in the shape of one of our
model configs, the Qwen-1 (QWenLMHeadModel) tensors of a Qwen2 model, and tools/convert_checkpoint.py run
in one process. Importing this file skips the test file that imports it where transformers is missing."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env

transformers = pytest.importorskip("transformers")

CONVERT_TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")


def hf_model(cfg):
    """transformers' Qwen2ForCausalLM in the shape of our model config ``cfg``, in fp32 and eval mode."""
    config = transformers.Qwen2Config(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=cfg.rotary_base, tie_word_embeddings=False, hidden_act="silu",
        attention_dropout=0.0, use_sliding_window=False, torch_dtype=torch.float32,
    )
    config._attn_implementation = "eager"
    return transformers.Qwen2ForCausalLM(config).eval()


def qwen1_state(model) -> dict:
    """The Qwen-1 (QWenLMHeadModel) tensors of a Qwen2ForCausalLM: fused c_attn = [q; k; v],
    w2 = gate, w1 = up."""
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
           "transformer.ln_f.weight": sd["model.norm.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for i in range(model.config.num_hidden_layers):
        a, b = f"model.layers.{i}.", f"transformer.h.{i}."
        out[b + "ln_1.weight"] = sd[a + "input_layernorm.weight"]
        out[b + "ln_2.weight"] = sd[a + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[b + f"attn.c_attn.{kind}"] = torch.cat([sd[a + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
        out[b + "attn.c_proj.weight"] = sd[a + "self_attn.o_proj.weight"]
        out[b + "mlp.w2.weight"] = sd[a + "mlp.gate_proj.weight"]
        out[b + "mlp.w1.weight"] = sd[a + "mlp.up_proj.weight"]
        out[b + "mlp.c_proj.weight"] = sd[a + "mlp.down_proj.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def convert(*runs: list) -> None:
    """Run tools/convert_checkpoint.py's main() once per argument list, all in one process (megatron-core
    is imported once); fails the test on the first non-zero exit status."""
    script = ("import json, runpy, sys\nmain = runpy.run_path(sys.argv[1])['main']\n"
              "for argv in json.loads(sys.argv[2]):\n    if main(argv):\n        sys.exit(f'failed: {argv}')\n")
    proc = subprocess.run([sys.executable, "-c", script, CONVERT_TOOL,
                           json.dumps([list(map(str, r)) for r in runs])],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
