"""Long context at inference (model/long_context.py): the formulas against hand computations, and the
techniques in a tiny random model against independent references: megatron-core's own RoPE at the
rescaled base, a window equal to running the model on the window's tokens alone, the full forward
for the KV cache and for evaluation/long_context.py's chunked perplexity."""

import dataclasses
import math

import pytest
import torch

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.evaluation.long_context import sequence_nll
from megatron_qwen.inference import KVCacheDecoder
from megatron_qwen.model.builder import build_model
from megatron_qwen.model.long_context import (
    LongContextSettings,
    logn_factors,
    ntk_alpha,
    ntk_base,
    set_long_context,
    window_mask,
    window_schedule,
)
from megatron_qwen.training.arguments import parse_run_config

TRAIN = 16  # the tiny models' "training length"
FLAGS = ["--mock-data", "--model-size", "tiny", "--seq-length", str(TRAIN)]


def test_ntk_alpha_and_base_by_hand():
    # alpha = max(2**ceil(log2(L / T) + 1) - 1, 1), worked out for T = 2048:
    # L/T = 1/2 -> 2**0 - 1 = 0 -> 1; 1 -> 2**1 - 1 = 1; just over 1 -> 2**2 - 1 = 3; 2 -> 3;
    # just over 2 -> 7; 4 -> 7; 8 -> 15
    by_hand = {1024: 1, 2048: 1, 2049: 3, 4096: 3, 4097: 7, 8192: 7, 16384: 15}
    assert {n: ntk_alpha(n, 2048) for n in by_hand} == by_hand
    # Qwen-7B (base 10000, head dim 128): alpha ** (64 / 63) = alpha * exp(ln(alpha) / 63), e.g.
    # 3 * exp(1.098612 / 63) = 3 * 1.0175912 = 3.052774
    by_hand = {1: 10000.0, 3: 30527.74, 7: 72195.8, 15: 156588.0}
    assert {a: ntk_base(10000, a, 128) for a in by_hand} == pytest.approx(by_hand, rel=1e-5)


def test_logn_factors_by_hand():
    # Qwen counts from 1: position p scales by log(p + 1) / log(T) once p + 1 > T; T = 4
    by_hand = [1, 1, 1, 1, math.log(5) / math.log(4), math.log(6) / math.log(4), math.log(7) / math.log(4), 1.5]
    assert logn_factors(torch.arange(8), 4).tolist() == pytest.approx(by_hand, rel=1e-7)


def test_window_schedule_and_mask_by_hand():
    assert window_schedule(4, [2, 8]) == (2, 4, 6, 8)
    assert window_schedule(3, [16, 32]) == (16, 24, 32)
    assert window_schedule(4, [5, 1, 7, 2]) == (5, 1, 7, 2)  # one per layer, as given
    for bad in ([8, 2], [0, 4], [1, 2, 3]):
        with pytest.raises(ConfigError, match="--window-attn"):
            window_schedule(4, bad)
    # queries at positions 2..4 over keys 0..4, window 2: each sees itself and the one before
    expected = torch.tensor([[1, 0, 0, 1, 1],
                             [1, 1, 0, 0, 1],
                             [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(window_mask(torch.arange(2, 5), torch.arange(5), 2), expected)


def tiny(flags=(), rotary_base=None):
    cfg = parse_run_config(PRETRAIN, [*FLAGS, *flags])
    if rotary_base is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, rotary_base=rotary_base))
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    # At the initialization's scale (std 0.02) attention is nearly uniform and position barely matters;
    # unit-variance activations give a random model whose attention depends on RoPE.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids[None], torch.arange(ids.numel())[None], None)[0]


@pytest.fixture(scope="module")
def model(single_process_per_module):
    return tiny()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 1024, (4 * TRAIN,), generator=torch.Generator().manual_seed(0))


def test_off_or_within_training_length_is_the_plain_model(model, ids):
    """Switched off, or on at lengths the techniques leave alone, the logits are bit-identical."""
    plain = logits(model, ids)
    every = LongContextSettings(TRAIN, dynamic_ntk=True, logn_attn=True, windows=(TRAIN,) * 4)
    try:
        set_long_context(model, LongContextSettings(TRAIN))
        assert torch.equal(logits(model, ids), plain)
        set_long_context(model, every)
        assert torch.equal(logits(model, ids[:TRAIN]), plain[:TRAIN])
    finally:
        set_long_context(model, None)
    assert torch.equal(logits(model, ids), plain)


def test_dynamic_ntk_is_rope_at_the_rescaled_base(model, ids):
    """Past the training length: megatron-core's own RoPE built with base' = base * alpha**(d/(d-2))."""
    alpha = ntk_alpha(ids.numel(), TRAIN)
    assert alpha == 7
    head_dim = model.config.kv_channels
    reference = tiny(rotary_base=ntk_base(10000, alpha, head_dim))
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), model.parameters()))
    try:
        set_long_context(model, LongContextSettings(TRAIN, dynamic_ntk=True))
        ours = logits(model, ids)
    finally:
        set_long_context(model, None)
    expected = logits(reference, ids)
    assert (ours - expected).abs().max() < 1e-4 * expected.abs().max()
    assert (logits(model, ids) - expected).abs().max() > 1e-2 * expected.abs().max()  # a change that shows


def test_logn_scales_the_queries_past_the_training_length(model, ids):
    attention = model.decoder.layers[0].self_attention.core_attention
    seen = []
    hook = attention.inner.register_forward_pre_hook(lambda m, args: seen.append((args[0], args[1])))
    try:
        logits(model, ids)
        set_long_context(model, LongContextSettings(TRAIN, logn_attn=True))
        logits(model, ids)
    finally:
        hook.remove()
        set_long_context(model, None)
    (q0, k0), (q1, k1) = seen
    i = torch.arange(1, ids.numel() + 1, dtype=torch.float64)
    by_hand = torch.where(i > TRAIN, i.log() / math.log(TRAIN), 1.0).float()[:, None, None, None]
    assert torch.equal(k1, k0)
    torch.testing.assert_close(q1, q0 * by_hand, rtol=1e-6, atol=0)


def test_window_is_the_model_on_the_window_alone(single_process_per_module, ids):
    """One layer with window w: position p's logits are those of the model run on tokens p-w+1..p only
    (RoPE is relative, so the shift to position 0 changes only fp32 rounding)."""
    one = tiny(["--num-layers", "1"])
    w = 5
    try:
        set_long_context(one, LongContextSettings(TRAIN, windows=(w,)))
        windowed = logits(one, ids)
    finally:
        set_long_context(one, None)
    for p in (w - 1, 20, ids.numel() - 1):
        alone = logits(one, ids[p - w + 1:p + 1])[-1]
        torch.testing.assert_close(windowed[p], alone, rtol=0, atol=1e-4 * alone.abs().max().item())
    assert not torch.allclose(windowed[-1], logits(one, ids)[-1], atol=1e-3)


def test_kv_cache_keeps_the_prefill_alpha_as_qwen(model, ids):
    """Prompt past the training length, then decoding: every step equals the full forward whose NTK
    alpha is fixed at the prompt's length (Qwen keeps the prefill's alpha while decoding)."""
    prompt, given = ids[:TRAIN + 3].tolist(), ids[TRAIN + 3:].tolist()
    assert (ntk_alpha(len(prompt), TRAIN), ntk_alpha(ids.numel(), TRAIN)) == (3, 7)
    every = dict(dynamic_ntk=True, logn_attn=True, windows=(6, 9, 12, 20))
    try:
        set_long_context(model, LongContextSettings(TRAIN, **every))
        decoder = KVCacheDecoder(model, [prompt], len(given) + 1)
        steps = [decoder.prefill()] + [decoder.step(torch.tensor([t])) for t in given]
        set_long_context(model, LongContextSettings(TRAIN, **every, ntk_length=len(prompt)))
        full = logits(model, ids)[len(prompt) - 1:]
    finally:
        set_long_context(model, None)
    cached = torch.cat(steps)
    torch.testing.assert_close(cached, full.float(), rtol=0, atol=1e-4 * full.abs().max().item())


def test_training_mode_and_window_count_are_refused(model):
    with pytest.raises(ConfigError, match="inference only"):
        set_long_context(model.train(), LongContextSettings(TRAIN, dynamic_ntk=True))
    model.eval()
    with pytest.raises(ConfigError, match="3 window sizes for a model of 4 layers"):
        set_long_context(model, LongContextSettings(TRAIN, windows=(4, 8, 16)))


def test_chunked_perplexity_is_the_full_forward(model, ids):
    """evaluation/long_context.py's bounded-memory pass (KV cache, a chunk of queries at a time, NTK
    alpha of the whole length) gives the full forward's negative log-likelihood."""
    model.vocab_size_unpadded = 1024
    settings = LongContextSettings(TRAIN, dynamic_ntk=True, logn_attn=True, windows=(6, 9, 12, 20))
    try:
        set_long_context(model, settings)
        full = logits(model, ids)
        set_long_context(model, dataclasses.replace(settings, ntk_length=ids.numel()))
        nll, count = sequence_nll(model, ids, chunk=24)
    finally:
        set_long_context(model, None)
    expected = torch.nn.functional.cross_entropy(full[:-1].double(), ids[1:], reduction="sum").item()
    assert count == ids.numel() - 1
    assert nll == pytest.approx(expected, rel=1e-5)
