"""Qwen (v1) model shapes and how a model is built: the published sizes and tiny ones for tests.

Every size shares the architecture of docs/qwen.md section 1; only the numbers below change.
"""

from dataclasses import dataclass, replace

QWEN_VOCAB_SIZE = 151_851  # 151,643 BPE ranks + 208 special tokens
QWEN_PADDED_VOCAB_SIZE = 151_936  # rows of the published Qwen-1.8B and Qwen-7B
QWEN_LARGE_PADDED_VOCAB_SIZE = 152_064  # rows of the published Qwen-14B and Qwen-72B


@dataclass(frozen=True)
class QwenModelConfig:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int = QWEN_VOCAB_SIZE  # ids the tokenizer can produce
    # Rows of the embedding and output matrices, as the published checkpoints have them. The same
    # at every tensor-parallel size (Megatron pads to 128 x TP instead, which changes the shapes
    # with the layout and breaks checkpoint conversion).
    padded_vocab_size: int = QWEN_PADDED_VOCAB_SIZE
    kv_channels: int | None = None  # None: hidden_size // num_attention_heads
    # Qwen-1's two lengths (docs/qwen.md section 1): the position limit (config.json's max_position_embeddings;
    # RoPE has no learned positions, so a flag may lift it) and the length the model was trained at (its
    # seq_length: where dynamic NTK and LogN begin). A run of ours trains at its own --seq-length, which its
    # checkpoint keeps as train.seq_length; seq_length here is the published or imported model's.
    max_position_embeddings: int = 8192
    seq_length: int | None = None
    rotary_base: int = 10000
    norm_epsilon: float = 1e-6
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def with_overrides(self, **overrides) -> "QwenModelConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class BuildSettings:
    """How the model is built and run, beyond its shape: the same for training, inference and
    conversion, so a model rebuilt from a checkpoint's stored configuration is the trained one."""

    transformer_impl: str = "local"  # "te", "flash" or "local" (model/spec.py)
    precision: str = "fp32"  # "fp32" or "bf16" (bf16 params, fp32 master weights in the optimizer)
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    recompute_granularity: str | None = None  # None, "full" or "selective"
    recompute_num_layers: int = 1
    seed: int = 1234  # initial weights (layout-independent) and dropout
    cpu_initialization: bool = False  # draw on the CPU even on a GPU: the CPU run's weights, slower
    # GPU fusions, on where their kernels exist (model/builder.py); Megatron-LM's --no-*-fusion flags.
    bias_swiglu_fusion: bool = True
    bias_dropout_fusion: bool = True
    masked_softmax_fusion: bool = True
    rope_fusion: bool = True
    gradient_accumulation_fusion: bool = True
    rmsnorm_fusion: bool = True  # ours: QwenRMSNorm under torch.compile (model/norm.py)
    # ours: the loss over chunks of tokens, keeping only the logits (model/loss.py; compiled on a GPU, on the
    # CPU too but eager); off: megatron-core's vocab-parallel cross entropy
    cross_entropy_fusion: bool = True


MODEL_PRESETS: dict[str, QwenModelConfig] = {
    # Tiny shapes for CPU tests and the built-in demo. vocab 1024 keeps the output layer cheap;
    # the real tokenizer's vocab is used whenever real text is trained on.
    "tiny": QwenModelConfig(
        hidden_size=64, num_layers=4, num_attention_heads=4, ffn_hidden_size=176,
        vocab_size=1024, padded_vocab_size=1024, max_position_embeddings=512, seq_length=512,
    ),
    "tiny-qwen-vocab": QwenModelConfig(
        hidden_size=128, num_layers=4, num_attention_heads=4, ffn_hidden_size=352,
        max_position_embeddings=8192, seq_length=8192,
    ),
    # The published config.json values of both lengths, with their sources: docs/qwen.md section 1.
    "1.8b": QwenModelConfig(hidden_size=2048, num_layers=24, num_attention_heads=16, ffn_hidden_size=5504,
                            max_position_embeddings=8192, seq_length=8192),
    "7b": QwenModelConfig(hidden_size=4096, num_layers=32, num_attention_heads=32, ffn_hidden_size=11008,
                          max_position_embeddings=32768, seq_length=8192),
    "14b": QwenModelConfig(hidden_size=5120, num_layers=40, num_attention_heads=40, ffn_hidden_size=13696,
                           padded_vocab_size=QWEN_LARGE_PADDED_VOCAB_SIZE, max_position_embeddings=8192,
                           seq_length=2048),
    "72b": QwenModelConfig(hidden_size=8192, num_layers=80, num_attention_heads=64, ffn_hidden_size=24576,
                           padded_vocab_size=QWEN_LARGE_PADDED_VOCAB_SIZE, rotary_base=1_000_000,
                           max_position_embeddings=32768, seq_length=32768),
}


def model_preset(name: str) -> QwenModelConfig:
    key = name.lower().removeprefix("qwen-")
    if key not in MODEL_PRESETS:
        raise ValueError(f"--model-size {name!r} is unknown; choose one of {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[key]
