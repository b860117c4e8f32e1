"""The fused attention back ends compute what megatron-core's local attention computes.

sdpa runs as it is (PyTorch's kernel exists on the CPU too). flash-attn needs CUDA, so its
kernel is stood in for by torch's scaled_dot_product_attention under flash-attn's calling
convention ([batch, seq, heads, dim], causal flag, softmax scale): what is tested is our
module's layout handling inside the Qwen layer spec. Training parity of sdpa at parallel
layouts: tests/test_parity.py.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model import attention
from megatron_qwen.model.builder import build_model
from megatron_qwen.training.arguments import parse_run_config


def sdpa_as_flash_attn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2)


@pytest.fixture
def flash_attn_on_cpu(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_func", sdpa_as_flash_attn)


def tiny(backend: str):
    return parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--seed", "5",
                                       "--transformer-impl", backend])


def logits(backend: str, tokens: torch.Tensor) -> torch.Tensor:
    (model,) = build_model(tiny(backend))
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None)


def test_flash_backend_matches_local(single_process, flash_attn_on_cpu):
    tokens = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    local, flash = logits("local", tokens), logits("flash", tokens)
    assert (local - flash).abs().max().item() < 1e-5
    # Causality holds: changing a later token leaves earlier logits alone.
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 1000
    assert torch.allclose(logits("flash", changed)[:, :-1], flash[:, :-1], atol=1e-6)


def test_sdpa_backend_matches_local(single_process):
    tokens = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    assert (logits("local", tokens) - logits("sdpa", tokens)).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_packed_samples_do_not_attend_across_boundaries(single_process, backend):
    """A packed SFT sample (block-diagonal causal mask, positions restarting per conversation)
    gives each conversation the logits it has alone."""
    (model,) = build_model(tiny(backend))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 1000, (1, 10), generator=g), torch.randint(0, 1000, (1, 14), generator=g)
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0)
    allowed = torch.zeros(24, 24, dtype=torch.bool)
    allowed[:10, :10] = torch.tril(torch.ones(10, 10, dtype=torch.bool))
    allowed[10:, 10:] = torch.tril(torch.ones(14, 14, dtype=torch.bool))
    with torch.no_grad():
        together = model(packed, positions, ~allowed.view(1, 1, 24, 24))  # True = masked out
        alone_a = model(a, torch.arange(10).unsqueeze(0), None)
        alone_b = model(b, torch.arange(14).unsqueeze(0), None)
    assert torch.allclose(together[:, :10], alone_a, atol=1e-5)
    assert torch.allclose(together[:, 10:], alone_b, atol=1e-5)
