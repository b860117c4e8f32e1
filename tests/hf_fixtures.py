"""Hugging Face helpers shared by the tests: transformers' Qwen2ForCausalLM in the shape of one of our
model configs or a tiny random one, the Qwen-1 (QWenLMHeadModel) tensors and config.json of a Qwen2 model,
safetensors directories read and compared, and tools/convert_checkpoint.py run in one process. Importing
this file skips the test file that imports it where transformers is missing."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env
from safetensors import safe_open
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")

CONVERT_TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=176,
             max_position_embeddings=128)


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


def qwen2_model(rows: int, seed: int, **shape):
    """A random Qwen2ForCausalLM of SHAPE (``shape`` overriding) with ``rows`` vocabulary rows."""
    config = transformers.Qwen2Config(vocab_size=rows, num_key_value_heads=shape.get("num_attention_heads", 4),
                                      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                      **{**SHAPE, **shape})
    config._attn_implementation = "eager"
    model = transformers.Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random (norms around 1, biases non-zero): a misplaced one shows
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + float("norm" in name))
    return model


def tiny_qwen2(seed: int = 0):
    """A random Qwen2ForCausalLM of the published 151,936 vocabulary rows and head dim 64 whose greedy
    continuations are runs of distinct tokens (unit-variance activations, logits that prefer some tokens), so
    equal ids mean equal models, not a repeated token."""
    config = transformers.Qwen2Config(vocab_size=151_936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 if p.shape[0] == 151_936 else p.shape[1] ** -0.5, generator=g)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + float("norm" in name))
    return model

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


def qwen1_config(model) -> dict:
    c = model.config
    return {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "kv_channels": c.hidden_size // c.num_attention_heads, "intermediate_size": 2 * c.intermediate_size,
            "vocab_size": c.vocab_size, "layer_norm_epsilon": c.rms_norm_eps, "rotary_emb_base": 10000,
            "rotary_pct": 1.0, "no_bias": True, "tie_word_embeddings": False,
            # Qwen-1's two lengths apart, as Qwen-7B's (8192 trained, 32768 positions): kept apart both ways
            "seq_length": c.max_position_embeddings // 2, "max_position_embeddings": c.max_position_embeddings}


def write_qwen1(directory, model, as_bin: bool) -> None:
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(qwen1_config(model), f)
    if as_bin:
        torch.save(qwen1_state(model), os.path.join(directory, "pytorch_model.bin"))
    else:
        save_file(qwen1_state(model), os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def read_safetensors_dir(directory) -> dict:
    out = {}
    for file in sorted(os.listdir(directory)):
        if file.endswith(".safetensors"):
            with safe_open(os.path.join(directory, file), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), (set(got) ^ set(want))
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def convert(*runs: list) -> None:
    """Run tools/convert_checkpoint.py's main() once per argument list, all in one process (megatron-core
    is imported once); fails the test on the first non-zero exit status."""
    script = ("import json, runpy, sys\nmain = runpy.run_path(sys.argv[1])['main']\n"
              "for argv in json.loads(sys.argv[2]):\n    if main(argv):\n        sys.exit(f'failed: {argv}')\n")
    proc = subprocess.run([sys.executable, "-c", script, CONVERT_TOOL,
                           json.dumps([list(map(str, r)) for r in runs])],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
