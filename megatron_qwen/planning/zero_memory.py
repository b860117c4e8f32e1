"""Model-state memory on the DeepSpeed engine (--zero-engine deepspeed; docs/planning.md, docs/zero.md).

Per GPU, with P the parameters of one tensor-parallel rank and DP data-parallel ranks, in a bf16 run
whose gradients accumulate in fp32 (the config we generate: data_types.grad_accum_dtype = fp32):

  stage 1     parameters 2P (bf16); gradients 4P (fp32, whole until the step's reduce); optimizer 12P/DP
              (fp32 master 4 + Adam m and v 8)
  stage 2     parameters 2P; gradients 4P/DP (an fp32 partition; bf16 gradients only pass through the
              reduce buckets); optimizer 12P/DP
  stage 3     parameters 2P/DP plus the largest module gathered with its gradient (4 bytes a parameter);
              gradients 4P/DP; optimizer 12P/DP
  + optimizer offload: the fp32 gradient partition and the optimizer state (16P/DP) in CPU memory
  + parameter offload (stage 3): the 2P/DP bf16 partition in CPU memory too

DeepSpeed's estimators (deepspeed.runtime.zero.stage_1_and_2 / stage3.estimate_zero{2,3}_model_states_
mem_needs) count the same, except 2 bytes of a bf16 gradient partition at stage 2 that fp32 accumulation
does not keep (tests/test_memory.py compares them). fp32 runs hold 4-byte parameters; the fp32 master
partition is kept all the same (measured: tests/test_deepspeed.py).
"""

from dataclasses import dataclass

from megatron_qwen.config.model import QwenModelConfig

MASTER_AND_MOMENTS = 12  # bytes per parameter: fp32 master weight, Adam's m and v


@dataclass(frozen=True)
class ZeroStates:
    """Bytes one GPU's process holds of the model states: on the GPU, and in CPU memory (offload)."""

    parameters: float
    gradients: float
    optimizer: float
    cpu: float


def largest_module(model: QwenModelConfig, tp: int) -> float:
    """The most parameters one module of a tensor-parallel rank holds directly: the embedding or output
    layer (vocabulary rows x hidden), the fused SwiGLU input projection or the fused QKV projection."""
    h, q = model.hidden_size, model.num_attention_heads * model.head_dim
    return max(model.padded_vocab_size * h, 2 * model.ffn_hidden_size * h, 3 * q * h + 3 * q) / tp


def deepspeed_traffic(params: float, layout, bf16: bool) -> tuple[float, float]:
    """Bytes one GPU moves per step beyond what the megatron engine moves: (stage 3's parameter all-gathers in
    forward and again in backward, over the DP group; with optimizer offload, over its host link: the fp32
    gradient partition down and the updated parameter partition up, and with parameter offload each
    layer's partition up again in forward and backward)."""
    width, dp = (2 if bf16 else 4), layout.dp
    shard = params / dp
    gathers = 2 * (dp - 1) / dp * params * width if layout.deepspeed_stage == 3 else 0.0
    host = shard * (4 + width) + 2 * shard * width * layout.offload_param if layout.offload_optimizer else 0.0
    return gathers, host


def zero_suffix(layout) -> str:
    """How a DeepSpeed layout offloads, as the planner writes it: "+o" optimizer, "+op" optimizer and parameters."""
    return "+op" if layout.offload_param else "+o" if layout.offload_optimizer else ""


def deepspeed_layout_states(params: float, model: QwenModelConfig, layout, bf16: bool) -> "ZeroStates":
    """deepspeed_states for a planner Layout (planning/memory.py) of ``model``."""
    return deepspeed_states(params, largest_module(model, layout.tp), layout.dp, layout.deepspeed_stage, bf16,
                            layout.offload_optimizer, layout.offload_param)


def deepspeed_states(params: float, largest_module: float, dp: int, stage: int, bf16: bool,
                     offload_optimizer: bool = False, offload_param: bool = False) -> ZeroStates:
    """``params``: parameters on this tensor-parallel rank; ``largest_module``: the most parameters one
    module holds directly (stage 3 gathers a module at a time)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"DeepSpeed ZeRO stage must be 1, 2 or 3, not {stage}")
    if offload_param and stage != 3:
        raise ValueError("parameter offload needs ZeRO stage 3")
    width = 2 if bf16 else 4
    shard = params / dp
    if stage < 3:
        on_gpu_params, cpu_params = params * width, 0.0
    else:
        gathered = largest_module * 2 * width  # the module's parameters and their gradient
        on_gpu_params = gathered + (0.0 if offload_param else shard * width)
        cpu_params = shard * width if offload_param else 0.0
    # Gradients accumulate in fp32 (our config's data_types.grad_accum_dtype): whole at stage 1, where
    # DeepSpeed reduces them at the step; at stages 2-3 they are reduce-scattered into an fp32 partition as
    # they come (the model-dtype gradients live only in the reduce buckets). With optimizer offload the
    # partition the optimizer steps from is in CPU memory.
    whole = params * 4 if stage == 1 else 0.0
    partition = shard * 4
    optimizer = shard * MASTER_AND_MOMENTS
    if offload_optimizer:
        return ZeroStates(on_gpu_params, whole, 0.0, cpu_params + partition + optimizer)
    return ZeroStates(on_gpu_params, whole or partition, optimizer, cpu_params)
