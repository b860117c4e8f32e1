"""A Hugging Face directory of random weights in either layout, written one tensor at a time: the model that
the checks and benchmarks of the converters and their clients run on (tools/check_vllm.py,
bench/bench_convert.py, bench/bench_generate_engines.py). Not a model to train.

The weights make greedy continuations runs of distinct tokens (unit-variance activations, an output layer
that prefers some tokens), so equal ids from two engines mean equal models, not one repeated token.
"""

import json
import os

import torch

from megatron_qwen.config.model import QWEN_VOCAB_SIZE, QwenModelConfig
from megatron_qwen.hf.files import SafetensorsWriter
from megatron_qwen.hf.layouts import hf_config, hf_shapes

# The model the vLLM check exports: Qwen's 151,936 published vocabulary rows, head dim 64 (vLLM's CPU
# attention takes no head dim under 32), 2 layers.
TINY_EXPORT_MODEL = QwenModelConfig(hidden_size=128, num_layers=2, num_attention_heads=2, ffn_hidden_size=256,
                                    vocab_size=QWEN_VOCAB_SIZE, padded_vocab_size=151_936,
                                    max_position_embeddings=512, seq_length=512)


def random_tensor(name: str, shape: tuple[int, ...], rows: int, g: torch.Generator) -> torch.Tensor:
    """fp32 values for one tensor: matrices scaled by their fan-in (the vocabulary's by 0.3), norms around 1,
    biases small."""
    if len(shape) == 2:
        return torch.randn(shape, generator=g) * (0.3 if shape[0] == rows else shape[1] ** -0.5)
    return torch.randn(shape, generator=g) * 0.1 + float("ln_" in name or "norm" in name)


def write_random_hf(directory: str, cfg: QwenModelConfig, layout: str, dtype: torch.dtype = torch.float32,
                    seed: int = 0, max_shard_size: int = 5 * 10**9) -> int:
    """Write random weights of ``cfg`` in ``layout`` and their config.json into ``directory`` (a new one);
    returns the number of parameters."""
    os.makedirs(directory)
    shapes = hf_shapes(cfg, layout)
    writer = SafetensorsWriter(directory, [(name, shape, dtype) for name, shape in shapes.items()], max_shard_size)
    g = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        writer.write(name, random_tensor(name, shape, cfg.padded_vocab_size, g).to(dtype))
    writer.close()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(cfg, layout, dtype, cfg.seq_length), f, indent=2)
    return sum(torch.Size(shape).numel() for shape in shapes.values())
