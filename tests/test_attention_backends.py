"""The fused attention back ends compute what megatron-core's local attention computes.

sdpa runs as it is (PyTorch's kernel exists on the CPU too). flash-attn needs CUDA, so its
kernel is stood in for by torch's scaled_dot_product_attention under flash-attn's calling
convention ([batch, seq, heads, dim], causal flag, softmax scale; tests/varlen_stand_in.py), which
refuses fp32 as flash-attn does: what is tested is our module's layout handling inside the Qwen layer
spec, in bf16. Training parity of sdpa at parallel layouts: tests/test_parity.py; packed samples on
every back end: tests/test_packed_sft.py.
"""

import pytest
import torch
from varlen_stand_in import flash_attn_stub

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model import attention
from megatron_qwen.model.builder import build_model
from megatron_qwen.training.arguments import parse_run_config


@pytest.fixture
def flash_attn_on_cpu(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_func", flash_attn_stub)


def tiny_model(backend: str, *extra: str):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--seed", "5",
                                      "--transformer-impl", backend, *extra])
    return build_model(cfg.model, cfg.parallel, cfg.build)


def logits(backend: str, tokens: torch.Tensor, *extra: str) -> torch.Tensor:
    (model,) = tiny_model(backend, *extra)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None).float()


def test_flash_backend_matches_local(single_process, flash_attn_on_cpu):
    """bf16, both: the same logits within bf16's rounding (2e-2 relative L2, gpu_check's bf16 tolerance; the CPU
    measures 4.5e-3, and a wrong layout of heads or sequence would be off by order 1)."""
    tokens = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    local, flash = logits("local", tokens, "--bf16"), logits("flash", tokens, "--bf16")
    assert ((flash - local).norm() / local.norm()).item() < 2e-2
    # Causality holds: changing a later token leaves earlier logits alone.
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 1000
    assert torch.allclose(logits("flash", changed, "--bf16")[:, :-1], flash[:, :-1], atol=1e-6)
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):  # as flash-attn itself
        logits("flash", tokens)


def test_sdpa_backend_matches_local(single_process):
    tokens = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    assert (logits("local", tokens) - logits("sdpa", tokens)).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_packed_samples_do_not_attend_across_boundaries(single_process, backend):
    """A packed SFT sample (block-diagonal causal mask, positions restarting per conversation)
    gives each conversation the logits it has alone."""
    (model,) = tiny_model(backend)
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
