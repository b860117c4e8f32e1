"""A step-time heuristic that ranks layouts: model FLOPs / (GPUs x achievable FLOP/s), with a pipeline
bubble, recompute and communication terms (docs/planning.md). A ranking, not a prediction."""

from dataclasses import dataclass, replace

from megatron_qwen.model.flops import training_flops_per_token
from megatron_qwen.planning.hardware import Cluster
from megatron_qwen.planning.memory import ACTIVATION_BYTES, Layout, Workload, stage_parameters
from megatron_qwen.planning.zero_memory import deepspeed_traffic


@dataclass(frozen=True)
class StepTime:
    compute: float  # seconds: model FLOPs and recompute at the achievable rate
    bubble: float
    communication: float

    @property
    def total(self) -> float:
        return self.compute + self.bubble + self.communication


def step_time(work: Workload, layout: Layout, cluster: Cluster) -> StepTime:
    m, s, b = work.model, work.seq_length, work.micro_batch_size
    tokens = work.global_batch_size * s
    model_flops = training_flops_per_token(m, s) * tokens
    layer_flops = training_flops_per_token(replace(m, padded_vocab_size=0), s) * tokens
    attention_flops = layer_flops - training_flops_per_token(replace(m, padded_vocab_size=0), 0) * tokens
    # A recomputed forward costs a third of its forward-and-backward: full recompute repeats every layer's
    # forward, selective only the attention core's.
    extra = {"full": layer_flops / 3, "selective": attention_flops / 3}.get(layout.recompute, 0.0)
    compute = (model_flops + extra) / (layout.num_gpus * cluster.achievable_tflops * 1e12)
    num_mb = work.global_batch_size // (b * layout.dp)
    bubble = compute * (layout.pp - 1) / (num_mb * layout.vp)

    def bandwidth(span: int) -> float:  # a group of consecutive ranks spanning ``span`` GPUs
        return (cluster.intra_node_gbs if span <= cluster.gpus_per_node else cluster.inter_node_gbs) * 1e9

    d = ACTIVATION_BYTES[work.precision]
    activation = s // layout.cp * b * m.hidden_size * d  # one [s, b, h] tensor of a micro-batch
    layers = m.num_layers // layout.pp
    comm = 0.0
    if layout.tp > 1:
        # sequence parallelism: all-gather before and reduce-scatter after attention and MLP, forward and
        # backward: 8 per layer, 12 when full recompute repeats the forward
        collectives = 12 if layout.recompute == "full" else 8
        # (a ring all-gather or reduce-scatter moves (TP - 1) / TP of the full tensor through each GPU)
        comm += num_mb * layers * collectives * (layout.tp - 1) / layout.tp * activation / bandwidth(layout.tp)
    if layout.cp > 1:
        # ring attention passes K and V (forward) and their gradients (backward) around the CP ring
        kv = 2 * activation / layout.tp
        comm += num_mb * layers * 3 * (layout.cp - 1) * kv / bandwidth(layout.tp * layout.cp)
    if layout.pp > 1:
        # one activation forward and one gradient backward per chunk boundary and micro-batch
        comm += num_mb * layout.vp * 2 * activation / layout.tp / bandwidth(layout.num_gpus)
    if layout.deepspeed_stage:  # DeepSpeed's extra traffic (zero_memory.py); its CPU Adam's time is not modelled
        gathers, host = deepspeed_traffic(stage_parameters(m, layout, "only"), layout, work.precision == "bf16")
        comm += gathers / bandwidth(layout.num_gpus) + host / (cluster.host_link_gbs * 1e9)
    return StepTime(compute=compute, bubble=bubble, communication=comm)
