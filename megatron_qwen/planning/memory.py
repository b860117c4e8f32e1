"""Memory per GPU of a training layout (docs/planning.md).

Every term is derived in docs/planning.md; in short, per GPU:
  parameters  2 bytes (bf16) or 4 (fp32) per parameter of the most loaded pipeline stage
  gradients   4 bytes: megatron-core's fp32 main_grad buffer (grad_reduce_in_fp32=True)
  optimizer   fp32 main weight (bf16 runs only) + Adam m and v, divided by DP x CP with the
              distributed optimizer (ZeRO-1)
  activations what autograd saves for one micro-batch of one layer (an inventory of megatron-core's
              Qwen layer, per back end), times the layer-micro-batches in flight under 1F1B, divided by
              TP (sequence parallelism is assumed whenever TP > 1) and CP; what the pipeline schedule
              keeps per chunk; the largest working set on top at the peak (the loss over the vocabulary
              on the last stage, a layer's backward with its recompute, the embedding's weight gradient
              on the first stage); megatron-core's persistent buffers.
"""

from dataclasses import dataclass

from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.model.loss import CHUNK_ELEMENTS
from megatron_qwen.planning.zero_memory import deepspeed_layout_states, zero_suffix
from megatron_qwen.platform.backends import BACKENDS

ACTIVATION_BYTES = {"bf16": 2, "fp32": 4}
RECOMPUTE = (None, "selective", "full")
COMPILED_LAYER_BACKENDS = ("sdpa", "flash")  # the back ends whose compiled layer's inventory is modelled
FP32 = 4
GIB = 2**30


@dataclass(frozen=True)
class Workload:
    """What is trained, independent of the layout."""

    model: QwenModelConfig
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    precision: str = "bf16"  # "bf16": bf16 params, fp32 main weights; "fp32": fp32 throughout
    backend: str = "te"  # the layer back end, as --transformer-impl names it in model/spec.py
    # megatron-core fuses SwiGLU and (with apex) accumulates weight gradients straight into main_grad
    # only on a GPU (model/builder.py); the CPU validation runs the unfused paths.
    gpu: bool = True
    chunked_loss: bool = True  # model/loss.py; False: megatron-core's loss (--no-cross-entropy-fusion)
    compiled_layers: bool = False  # model/compile.py (--compile-layers), on the sdpa or flash back end

    def __post_init__(self):
        if self.precision not in ACTIVATION_BYTES:
            raise ValueError(f"precision must be one of {', '.join(ACTIVATION_BYTES)}, not {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    vp: int = 1  # model chunks per pipeline stage: > 1 is interleaved 1F1B
    distributed_optimizer: bool = False
    recompute: str | None = None  # None, "selective" or "full"
    deepspeed_stage: int = 0  # > 0: the DeepSpeed engine at this ZeRO stage (planning/zero_memory.py)
    offload_optimizer: bool = False  # DeepSpeed: optimizer state and step in CPU memory
    offload_param: bool = False  # DeepSpeed stage 3: parameter partitions in CPU memory too

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"DP{self.dp}"]
        parts += [f"CP{self.cp}"] if self.cp > 1 else []
        parts += [f"VP{self.vp}"] if self.vp > 1 else []
        parts += ["ZeRO-1"] if self.distributed_optimizer else []
        parts += [f"DeepSpeed ZeRO-{self.deepspeed_stage}{zero_suffix(self)}"] if self.deepspeed_stage else []
        parts += [f"{self.recompute} recompute"] if self.recompute else []
        return " ".join(parts)


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of a pipeline stage."""

    stage: str  # "only" (PP=1), "first" or "last"
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    cpu: float = 0.0  # CPU memory of this GPU's process for offloaded state (not in total)

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations


# ---------------------------------------------------------------------------------------------- parameters


def layer_parameters(model: QwenModelConfig, tp: int) -> float:
    """One layer's parameters on a tensor-parallel rank: QKV (weight and bias), output projection and the
    three SwiGLU matrices are split over TP; the two RMSNorm weights are replicated."""
    h, f, q = model.hidden_size, model.ffn_hidden_size, model.num_attention_heads * model.head_dim
    return (3 * q * h + 3 * q + q * h + 3 * f * h) / tp + 2 * h


def stage_parameters(model: QwenModelConfig, layout: Layout, stage: str) -> float:
    """Parameters on one GPU of ``stage``: its layers, plus the (untied) embedding on the first stage and
    the final norm and output layer on the last; the vocabulary rows are split over TP."""
    h, rows = model.hidden_size, model.padded_vocab_size
    count = model.num_layers // layout.pp * layer_parameters(model, layout.tp)
    if stage in ("only", "first"):
        count += rows * h / layout.tp
    if stage in ("only", "last"):
        count += rows * h / layout.tp + h
    return count


# ---------------------------------------------------------------------------------------------- activations


def _softmax_bytes(d: int) -> int:
    """A softmax computed in fp32 is kept in fp32, plus its cast to the activation dtype when that is narrower."""
    return FP32 + (d if d < FP32 else 0)


def _tokens(work: Workload, layout: Layout) -> int:
    """Tokens of one micro-batch on one GPU before the TP split: context parallelism splits the sequence."""
    return work.seq_length // layout.cp * work.micro_batch_size


def layer_bytes_per_token(work: Workload, recompute: str | None) -> float:
    """Bytes one layer saves for backward per token of the micro-batch, before division by TP and CP,
    without the per-position terms (layer_bytes_per_position). Full recompute keeps only the layer's input.
    The inventory, item by item, is docs/planning.md's table."""
    m, d = work.model, ACTIVATION_BYTES[work.precision]
    h, f, a = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    q = a * m.head_dim
    s = work.seq_length
    if recompute == "full":
        return d * h
    if _compiled_inventory(work, recompute):
        return _compiled_layer_bytes_per_token(work)
    te = work.backend == "te"
    # Each norm: transformer-engine's fused norm+linear keeps the input and the normed output; QwenRMSNorm
    # keeps an fp32 copy of the input, the normed output and the linear after it its own input.
    norm = (2 * d * h if te else FP32 * h + 2 * d * h) + FP32  # + 1/rms, fp32, one per token
    qkv_output = 3 * d * q  # the value is a view into the fused QKV output, which keeps all of it alive
    if recompute == "selective":
        # The checkpoint keeps the rotated query and key (fp32 on the local spec, model/rope.py; bf16 from TE's
        # fused RoPE) and the value; of the attention core only its output, the projection's input, stays.
        rotated_qk = 2 * q * (d if te else FP32)
        core = 0.0
        projection_input = d * q
    else:
        rotated_qk = 2 * d * q
        if work.backend == "local":  # fp32 softmax output, plus the attention-dtype probabilities in bf16
            core = a * s * _softmax_bytes(d)
        else:  # fused kernels keep the output and the fp32 log-sum-exp per head, never the s x s scores
            core = d * q + FP32 * a
        # the local spec's projection reads a contiguous copy of the attention output; TE's reads it as it is
        projection_input = 0 if te else d * q
    # SwiGLU: the fused kernel keeps its [gate; up] input; unfused, silu's output and a copy of up
    # (megatron-core adds glu_linear_offset) as well; then the down projection's input.
    swiglu = 2 * d * f + (0 if work.gpu else 2 * d * f) + d * f
    return 2 * norm + qkv_output + rotated_qk + core + projection_input + swiglu


def _compiled_inventory(work: Workload, recompute: str | None) -> bool:
    """Whether a layer keeps what torch.compile's partitioner chooses: measured with sdpa, taken as the same
    for flash-attn (which also keeps only its output and log-sum-exp), without recompute. Elsewhere the
    eager inventory stands, an upper bound."""
    return work.compiled_layers and recompute is None and work.backend in COMPILED_LAYER_BACKENDS


def _compiled_layer_bytes_per_token(work: Workload) -> float:
    """A compiled layer (model/compile.py), as bench/bench_activations.py finds it: the layer's input and both
    norms' outputs, and 1/rms per norm; the fused QKV output (the value is a view into it), the rotated query
    and key rounded back to the activation dtype, the attention output with its fp32 log-sum-exp, and the
    projection's contiguous input; [gate; up] and the down projection's input. The fp32 copies of the eager
    norms and RoPE, and silu's output, are recomputed in the backward instead."""
    m, d = work.model, ACTIVATION_BYTES[work.precision]
    h, f, a = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    q = a * m.head_dim
    norms = 3 * d * h + 2 * FP32
    attention = 3 * d * q + 2 * d * q + d * q + FP32 * a + d * q
    return norms + attention + 3 * d * f


def layer_bytes_per_position(work: Workload, recompute: str | None) -> float:
    """Per-layer bytes that scale with the sequence but not the batch or TP: on the local spec, the
    four fp32 RoPE cos/sin tables megatron-core builds per layer, and the local back end's s x s causal
    mask (one bool per key). A compiled layer recomputes the tables from the model's one RoPE input."""
    if work.backend == "te" or recompute == "full" or _compiled_inventory(work, recompute):
        return 0.0
    rope_tables = 4 * work.model.head_dim * FP32
    mask = work.seq_length if work.backend == "local" and recompute is None else 0
    return rope_tables + mask


def layer_micro_batch_bytes(work: Workload, layout: Layout, recompute: str | None) -> float:
    """One layer, one micro-batch, on one GPU."""
    return (_tokens(work, layout) * layer_bytes_per_token(work, recompute) / layout.tp
            + work.seq_length // layout.cp * layer_bytes_per_position(work, recompute))


def backward_working_set(work: Workload, layout: Layout) -> float:
    """What a layer's backward pass holds on top of the stored activations. Always the gradients in the
    MLP: that of the down projection's input and, from it, of [gate; up] (3 d f per token, fused or not).
    Full recompute first re-creates all of the layer's activations; selective recompute re-creates the
    attention core, which is not live at the same time as the MLP's gradients."""
    d, m, tokens = ACTIVATION_BYTES[work.precision], work.model, _tokens(work, layout)
    mlp_gradients = tokens * 3 * d * m.ffn_hidden_size / layout.tp
    if layout.recompute == "full":
        return layer_micro_batch_bytes(work, layout, None) + mlp_gradients
    if layout.recompute == "selective":
        q, a, s = m.num_attention_heads * m.head_dim, m.num_attention_heads, work.seq_length
        downcast = 0 if work.backend == "te" or d == FP32 else 2 * d * q  # q, k back to bf16 (model/rope.py)
        if work.backend == "local":
            core = tokens * (a * s * _softmax_bytes(d) + downcast) / layout.tp + s * s
        else:
            core = tokens * (d * q + FP32 * a + downcast) / layout.tp
        return max(core, mlp_gradients)
    return mlp_gradients


def workspaces(work: Workload, layout: Layout) -> float:
    """Buffers megatron-core allocates once and keeps: the local back end's score buffer for baddbmm and,
    with sequence parallelism, the buffer the linear layers all-gather their input into (the full sequence)."""
    m, d = work.model, ACTIVATION_BYTES[work.precision]
    s, b = work.seq_length // layout.cp, work.micro_batch_size
    scores = d * b * m.num_attention_heads / layout.tp * s * s if work.backend == "local" else 0
    gather = d * s * b * m.hidden_size if layout.tp > 1 else 0
    return scores + gather


def pipeline_tensors(work: Workload, layout: Layout) -> float:
    """Per chunk in flight, what the pipeline schedule itself keeps for the backward pass: the chunk's output
    and, where no layer saves it (bf16 on the local spec, whose norm keeps an fp32 copy), its received input."""
    if layout.pp == 1:
        return 0.0
    d = ACTIVATION_BYTES[work.precision]
    one = d * _tokens(work, layout) * work.model.hidden_size / layout.tp
    kept_input = work.backend != "te" and d < FP32 and layout.recompute != "full"
    return one * (2 if kept_input else 1)


def loss_working_set(work: Workload, layout: Layout) -> float:
    """The last stage's final norm, output layer input and loss at the forward-backward turn, over the rank's
    V/TP rows of the vocabulary; the larger of two moments:
    - the loss. The chunked loss (model/loss.py) keeps the logits in the activation dtype and writes their
      gradient into the same storage one chunk of tokens at a time, the chunk's temporaries beside it: eager
      (the CPU) an fp32 copy and, in bf16, the chunk's gradient; compiled (a GPU) only that gradient.
      megatron-core's keeps an fp32 softmax for every token, with the bf16 logits or their gradient beside it;
    - the output layer's backward: the logits' gradient in the activation dtype and, without fused gradient
      accumulation (the CPU), the weight's and the input's gradients."""
    d, tokens = ACTIVATION_BYTES[work.precision], _tokens(work, layout)
    h, rows = work.model.hidden_size, work.model.padded_vocab_size // layout.tp
    norm = (d * h if work.backend == "te" else FP32 * h + d * h) + FP32  # then the output layer's input
    if work.chunked_loss:
        chunk = min(tokens, max(1, CHUNK_ELEMENTS // rows)) * rows
        loss = tokens * rows * d + chunk * (d if work.gpu else FP32 + (d if d < FP32 else 0))
    else:
        loss = tokens * rows * _softmax_bytes(d)
    output_layer = tokens * rows * d + (0 if work.gpu else rows * h * d + tokens * d * h / layout.tp)
    return tokens * (norm + d * h) / layout.tp + max(loss, output_layer)


def embedding_gradient(work: Workload, layout: Layout) -> float:
    """The first stage's embedding backward builds a dense weight gradient before it is added to main_grad."""
    return work.model.padded_vocab_size * work.model.hidden_size / layout.tp * ACTIVATION_BYTES[work.precision]


def chunks_in_flight(num_microbatches: int, layout: Layout, rank: int) -> int:
    """Forward passes of model chunks whose activations pipeline rank ``rank`` holds at once under
    megatron-core's 1F1B schedules (pipeline_parallel/schedules.py): PP - rank micro-batches without
    interleaving; with VP chunks, 2(PP - rank - 1) + (VP - 1) PP warmup chunks plus the one in flight."""
    total = num_microbatches * layout.vp
    if layout.pp == 1:
        return 1
    if layout.vp == 1:
        return min(total, layout.pp - rank)
    return min(total, 2 * (layout.pp - rank - 1) + (layout.vp - 1) * layout.pp + 1)


def stage_activations(work: Workload, layout: Layout, stage: str) -> float:
    """Peak activation bytes on one GPU of ``stage``, all chunks in flight stored plus the largest working
    set: a layer's backward (recompute included), the loss on the last stage at the forward-backward turn,
    or, on the first stage, the embedding gradient at the end of a micro-batch's backward (that
    micro-batch's chunk freed by then)."""
    rank = layout.pp - 1 if stage == "last" else 0
    layers_per_chunk = work.model.num_layers // (layout.pp * layout.vp)
    per_chunk = (layers_per_chunk * layer_micro_batch_bytes(work, layout, layout.recompute)
                 + pipeline_tensors(work, layout))
    in_flight = chunks_in_flight(work.global_batch_size // (work.micro_batch_size * layout.dp), layout, rank)
    stored = in_flight * per_chunk
    peak = stored + backward_working_set(work, layout)
    if stage in ("only", "last"):
        peak = max(peak, stored + loss_working_set(work, layout))
    if stage in ("only", "first"):
        peak = max(peak, stored - per_chunk + embedding_gradient(work, layout))
    return peak + workspaces(work, layout)


# ---------------------------------------------------------------------------------------------- per GPU


def stage_memory(work: Workload, layout: Layout, stage: str) -> StageMemory:
    params = stage_parameters(work.model, layout, stage)
    bf16 = work.precision == "bf16"
    if layout.deepspeed_stage:
        z = deepspeed_layout_states(params, work.model, layout, bf16)
        return StageMemory(stage, z.parameters, z.gradients, z.optimizer, stage_activations(work, layout, stage), z.cpu)
    # fp32 runs update the parameters in place: Adam's m and v only; bf16 runs add an fp32 main weight.
    optimizer_bytes = 3 * FP32 if bf16 else 2 * FP32
    if layout.distributed_optimizer:
        optimizer_bytes /= layout.dp * layout.cp
    return StageMemory(
        stage=stage,
        parameters=params * (2 if bf16 else FP32),
        gradients=params * FP32,
        optimizer=params * optimizer_bytes,
        activations=stage_activations(work, layout, stage),
    )


def estimate(work: Workload, layout: Layout) -> list[StageMemory]:
    """Memory of each distinct pipeline stage (middle stages never exceed the first)."""
    stages = ("only",) if layout.pp == 1 else ("first", "last")
    return [stage_memory(work, layout, s) for s in stages]


def peak_stage(work: Workload, layout: Layout) -> StageMemory:
    """The most loaded GPU, which decides whether a layout fits."""
    return max(estimate(work, layout), key=lambda m: m.total)
