"""Qwen (v1) model shapes: the published sizes and tiny ones for tests.

Every size shares the architecture in SPEC.md section 1; only the numbers below change.
"""

from dataclasses import dataclass, replace

QWEN_VOCAB_SIZE = 151_851  # 151,643 BPE ranks + 208 special tokens
QWEN_PADDED_VOCAB_SIZE = 151_936  # row count of the published checkpoints


@dataclass(frozen=True)
class QwenModelConfig:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int = QWEN_VOCAB_SIZE
    # Rows of the embedding and output matrices. Kept the same at every tensor-parallel size
    # (Megatron pads to 128 x TP instead, which changes the shapes with the layout).
    make_vocab_size_divisible_by: int = 128
    max_position_embeddings: int = 8192
    rotary_base: int = 10000
    norm_epsilon: float = 1e-6
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m

    def with_overrides(self, **overrides) -> "QwenModelConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


MODEL_PRESETS: dict[str, QwenModelConfig] = {
    # Tiny shapes for CPU tests and the built-in demo. vocab 1024 keeps the output layer cheap;
    # the real tokenizer's vocab is used whenever real text is trained on.
    "tiny": QwenModelConfig(
        hidden_size=64, num_layers=4, num_attention_heads=4, ffn_hidden_size=176,
        vocab_size=1024, max_position_embeddings=512,
    ),
    "tiny-qwen-vocab": QwenModelConfig(
        hidden_size=128, num_layers=4, num_attention_heads=4, ffn_hidden_size=352,
        max_position_embeddings=8192,
    ),
    "1.8b": QwenModelConfig(hidden_size=2048, num_layers=24, num_attention_heads=16, ffn_hidden_size=5504),
    "7b": QwenModelConfig(hidden_size=4096, num_layers=32, num_attention_heads=32, ffn_hidden_size=11008),
    "14b": QwenModelConfig(hidden_size=5120, num_layers=40, num_attention_heads=40, ffn_hidden_size=13696),
    "72b": QwenModelConfig(hidden_size=8192, num_layers=80, num_attention_heads=64, ffn_hidden_size=24576),
}


def model_preset(name: str) -> QwenModelConfig:
    key = name.lower().removeprefix("qwen-")
    if key not in MODEL_PRESETS:
        raise ValueError(f"--model-size {name!r} is unknown; choose one of {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[key]
