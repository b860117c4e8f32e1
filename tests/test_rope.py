"""Qwen's rotary position embedding (megatron_qwen/model/rope.py): the inverse frequencies stay fp32 in a
bf16 model, and q and k are rotated in fp32 and rounded once, as Qwen's own modelling code does (the GPU
check's correctness stage measures the same on the device). RoPE scaling for long inputs:
tests/test_long_context.py."""

import pytest
import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model, build_on_meta
from megatron_qwen.model.rope import UpcastForRope
from megatron_qwen.training.arguments import parse_run_config


def test_rotary_frequencies_stay_fp32_in_bf16(single_process):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--bf16"])
    (model,) = build_on_meta(cfg.model, cfg.parallel, cfg.build)
    model.bfloat16()
    assert model.rotary_pos_emb.inv_freq.dtype == torch.float32
    head_dim = cfg.model.head_dim
    expected = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    assert torch.allclose(model.rotary_pos_emb.inv_freq.double(), expected, rtol=1e-6)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_bf16_rope_rotates_in_fp32_as_qwen(single_process, backend):
    """In the bf16 model the attention gets Qwen's rotation: q and k rotated in fp32, rounded once."""
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--bf16", "--transformer-impl", backend])
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    attention = model.decoder.layers[0].self_attention
    assert isinstance(attention.q_layernorm, UpcastForRope) and isinstance(attention.k_layernorm, UpcastForRope)
    seen = {}
    attention.q_layernorm.register_forward_hook(lambda m, args, out: seen.update(before=out))
    attention.core_attention.inner.register_forward_pre_hook(lambda m, args: seen.update(after=args[0]))
    seq = 48
    tokens = torch.randint(0, 1024, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens, torch.arange(seq).unsqueeze(0), None)
        freqs = model.rotary_pos_emb(seq)  # [seq, 1, 1, head_dim], fp32
    before, after = seen["before"], seen["after"]
    assert before.dtype == torch.float32 and after.dtype == torch.bfloat16
    qwen = (before * freqs.cos() + _rotate_half(before) * freqs.sin()).to(torch.bfloat16)
    assert torch.equal(after, qwen)
    in_bf16 = before.bfloat16()
    stock = in_bf16 * freqs.cos().bfloat16() + _rotate_half(in_bf16) * freqs.sin().bfloat16()
    assert not torch.equal(stock, qwen)  # megatron-core's bf16 rotation is a different number


def test_fp32_rope_slots_are_identity_in_fp32():
    x = torch.randn(4, 2, 3, 8)
    assert UpcastForRope()(x) is x  # no copy, no op recorded: fp32 runs are bit-identical
