"""Model presets have the published Qwen sizes, counted from the built model's shapes."""

import pytest
import torch

from megatron_qwen.config.model import QWEN_PADDED_VOCAB_SIZE, model_preset
from megatron_qwen.config.parallel import ParallelConfig
from megatron_qwen.model.builder import ModelBuildOptions, build_on_meta, transformer_config
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed

PUBLISHED = {"1.8b": 1.84e9, "7b": 7.72e9, "14b": 14.17e9, "72b": 72.3e9}  # Qwen report, Table 1


@pytest.fixture(scope="module")
def single_process():
    init_distributed(1, 1, None, 1, seed=0)
    yield
    destroy_distributed()


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_parameter_count_matches_report(single_process, size):
    cfg = model_preset(size)
    assert cfg.padded_vocab_size == QWEN_PADDED_VOCAB_SIZE
    opts = ModelBuildOptions()
    (model,) = build_on_meta(cfg, transformer_config(cfg, ParallelConfig(), opts, on_gpu=False), opts)
    assert all(p.is_meta for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED[size]) / PUBLISHED[size] < 0.005, (size, count)


def test_qwen_architecture_choices(single_process):
    """Untied embeddings, bias on QKV only, RMSNorm weights, SwiGLU fc1 of 2 x FFN rows."""
    cfg = model_preset("7b")
    opts = ModelBuildOptions()
    (model,) = build_on_meta(cfg, transformer_config(cfg, ParallelConfig(), opts, on_gpu=False), opts)
    params = dict(model.named_parameters())
    assert params["embedding.word_embeddings.weight"] is not params["output_layer.weight"]
    biases = [n for n in params if n.endswith(".bias")]
    assert biases and all("linear_qkv" in n for n in biases)
    assert params["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * 11008, 4096)
    assert params["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (3 * 4096, 4096)
    assert model.decoder.layers[0].input_layernorm.eps == 1e-6


def test_rotary_frequencies_stay_fp32_in_bf16(single_process):
    cfg = model_preset("tiny")
    opts = ModelBuildOptions(precision="bf16")
    tcfg = transformer_config(cfg, ParallelConfig(), opts, on_gpu=False)
    (model,) = build_on_meta(cfg, tcfg, opts)
    model.bfloat16()
    assert model.rotary_pos_emb.inv_freq.dtype == torch.float32
    expected = 1.0 / 10000 ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    assert torch.allclose(model.rotary_pos_emb.inv_freq.double(), expected, rtol=1e-6)
