"""Qwen (v1) model shapes and how a model is built: the published sizes and tiny ones for tests.

Every size shares the architecture of docs/qwen.md section 1; only the numbers below change.
"""

from dataclasses import dataclass, replace

from megatron_qwen.config.flags import (
    FUSIONS,
    INIT,
    NON_NEGATIVE,
    POSITIVE,
    PRECISION,
    PROBABILITY,
    RECOMPUTE,
    REGULARIZATION,
    SHAPE,
    flag,
)
from megatron_qwen.platform.backends import BACKEND_FLAGS, available_backend

QWEN_VOCAB_SIZE = 151_851  # 151,643 BPE ranks + 208 special tokens
QWEN_PADDED_VOCAB_SIZE = 151_936  # rows of the published Qwen-1.8B and Qwen-7B
QWEN_LARGE_PADDED_VOCAB_SIZE = 152_064  # rows of the published Qwen-14B and Qwen-72B


# The shape flags override a --model-size preset: unset (None) keeps the preset's value; every one is a
# positive number.
def _shape(name: str, **kw):
    return flag(name, group=SHAPE, unset=None, bounds=POSITIVE, help="override the preset", **kw)


@dataclass(frozen=True)
class QwenModelConfig:
    hidden_size: int = _shape("--hidden-size")
    num_layers: int = _shape("--num-layers")
    num_attention_heads: int = _shape("--num-attention-heads")
    ffn_hidden_size: int = _shape("--ffn-hidden-size")
    vocab_size: int = _shape("--vocab-size", default=QWEN_VOCAB_SIZE)  # ids the tokenizer can produce
    # Rows of the embedding and output matrices, as the published checkpoints have them. The same
    # at every tensor-parallel size (Megatron pads to 128 x TP instead, which changes the shapes
    # with the layout and breaks checkpoint conversion).
    padded_vocab_size: int = QWEN_PADDED_VOCAB_SIZE
    kv_channels: int | None = _shape("--kv-channels", default=None)  # None: hidden_size // num_attention_heads
    # Qwen-1's two lengths (docs/qwen.md section 1): the position limit (config.json's max_position_embeddings;
    # RoPE has no learned positions, so a flag may lift it) and the length the model was trained at (its
    # seq_length: where dynamic NTK and LogN begin). A run of ours trains at its own --seq-length, which its
    # checkpoint keeps as train.seq_length; seq_length here is the published or imported model's.
    max_position_embeddings: int = _shape("--max-position-embeddings", default=8192)
    seq_length: int | None = None
    rotary_base: int = _shape("--rotary-base", default=10000)
    norm_epsilon: float = _shape("--norm-epsilon", default=1e-6)
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def with_overrides(self, **overrides) -> "QwenModelConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class VocabPaddingSettings:
    """Read to pad an explicit --vocab-size (padded_rows); not stored: the padded row count is."""

    make_vocab_size_divisible_by: int = flag(
        "--make-vocab-size-divisible-by", group=SHAPE, default=128, bounds=POSITIVE,
        help="with --vocab-size: pad the embedding rows to a multiple of this (the same at every TP)")


def resolve_backend(flag_value: str, precision: str) -> str:
    """--transformer-impl's value as the model builder names it; auto: the best one installed for ``precision``
    (the run's "fp32" or "bf16")."""
    return available_backend(precision) if flag_value == "auto" else BACKEND_FLAGS[flag_value]


FUSION_HELP = "turn this fusion off (on by default where it runs; docs/PERFORMANCE.md)"


def _fusion(name: str):
    return flag(name, group=FUSIONS, default=True, help=FUSION_HELP)


@dataclass(frozen=True)
class BuildSettings:
    """How the model is built and run, beyond its shape: the same for training, inference and
    conversion, so a model rebuilt from a checkpoint's stored configuration is the trained one."""

    # "te", "flash", "sdpa" or "local" (model/spec.py); resolve_backend, given the precision (parse_run_config)
    transformer_impl: str = flag(
        "--transformer-impl", group=FUSIONS, default="local", unset="auto", choices=("auto", *BACKEND_FLAGS),
        help="layer back end; auto picks transformer_engine, then flash-attn (bf16 only), then torch sdpa on a GPU, "
             "and local on the CPU")
    # "fp32" or "bf16" (bf16 params, fp32 master weights in the optimizer)
    precision: str = flag("--bf16", group=PRECISION, default="fp32", dest="bf16", kind=bool, unset=False,
                          to_field=lambda bf16: "bf16" if bf16 else "fp32",
                          help="bf16 mixed precision (fp32 master weights)")
    hidden_dropout: float = flag("--hidden-dropout", group=REGULARIZATION, default=0.0, recipe="hidden_dropout",
                                 bounds=PROBABILITY, help="dropout after each block")
    attention_dropout: float = flag("--attention-dropout", group=REGULARIZATION, default=0.0,
                                    recipe="attention_dropout", bounds=PROBABILITY,
                                    help="dropout on attention probabilities")
    recompute_granularity: str | None = flag("--recompute-granularity", group=RECOMPUTE, default=None,
                                             choices=("full", "selective"))
    recompute_num_layers: int = flag("--recompute-num-layers", group=RECOMPUTE, default=1, bounds=POSITIVE)
    # initial weights (layout-independent) and dropout
    seed: int = flag("--seed", group=INIT, default=1234, bounds=NON_NEGATIVE)
    cpu_initialization: bool = flag(
        "--use-cpu-initialization", group=INIT, default=False,
        help="draw the initial weights on the CPU, also on a GPU: the same weights as a CPU run and on every GPU "
             "model, slower (by default they are drawn on the device that holds them)")
    # GPU fusions, on where their kernels exist (model/builder.py); Megatron-LM's --no-*-fusion flags.
    bias_swiglu_fusion: bool = _fusion("--no-bias-swiglu-fusion")
    bias_dropout_fusion: bool = _fusion("--no-bias-dropout-fusion")
    masked_softmax_fusion: bool = _fusion("--no-masked-softmax-fusion")
    rope_fusion: bool = _fusion("--no-rope-fusion")
    gradient_accumulation_fusion: bool = _fusion("--no-gradient-accumulation-fusion")
    rmsnorm_fusion: bool = _fusion("--no-rmsnorm-fusion")  # ours: QwenRMSNorm under torch.compile (model/norm.py)
    # ours: the loss over chunks of tokens, keeping only the logits (model/loss.py; compiled on a GPU, on the
    # CPU too but eager); off: megatron-core's vocab-parallel cross entropy
    cross_entropy_fusion: bool = _fusion("--no-cross-entropy-fusion")
    # Each transformer layer as one torch.compile graph (model/compile.py). Checkpoints before this field
    # kept it as train.compile_layers (RunConfig.from_dict).
    compile_layers: bool = flag(
        "--compile-layers", group=FUSIONS, default=False,
        help="each transformer layer's forward and backward as compiled graphs (torch.compile; megatron engine, "
             "local/sdpa/flash back ends; docs/PERFORMANCE.md)")
    # The recipe's: "lm", the output layer over the vocabulary, or "reward", one value per token read at the
    # end token (model/reward.py). Checkpoints before this field were all "lm".
    head: str = "lm"


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
