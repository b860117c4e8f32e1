"""The deepspeed engine's optimizer: DeepSpeed's own Adams where they run, torch's AdamW elsewhere (docs/zero.md).

- ``--zero-offload-optimizer cpu``: DeepSpeedCPUAdam steps the fp32 master partitions in CPU memory (what
  Megatron-DeepSpeed uses there; DeepSpeed warns that other optimizers perform poorly with offload);
- on a GPU without offload: DeepSpeed's FusedAdam;
- otherwise, with ``--use-torch-adamw``, or when DeepSpeed's C++/CUDA extension does not build: torch's AdamW,
  its fused kernel where the state lives on a GPU or, offloaded, on the CPU (where it steps 9x faster than the
  default foreach kernel, bench/bench_deepspeed_adam.py); ``--fused-adam`` / ``--no-fused-adam`` decide instead.

DeepSpeed compiles both extensions on first use (ninja, a C++ compiler, for FusedAdam nvcc) and caches them
(~/.cache/torch_extensions). Every one is AdamW with megatron-core's parameter groups (no weight decay on biases
and norms); the LR schedule sets each group's lr and weight decay before every step.
"""

import torch
import torch.distributed as dist

from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.zero import ZeroSettings

TORCH, CPU_ADAM, FUSED_ADAM = "torch AdamW", "DeepSpeedCPUAdam", "DeepSpeed FusedAdam"


def optimizer_kind(zero: ZeroSettings, gpu: bool) -> str:
    """Which optimizer these settings ask for (before any build is tried)."""
    if zero.torch_adamw:
        return TORCH
    if zero.offload_optimizer == "cpu":
        return CPU_ADAM
    return FUSED_ADAM if gpu else TORCH


def param_groups(module) -> list[dict]:
    """megatron-core's groups: weight decay on matrices, none on biases and norms (wd_mult for its scheduler)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.dim() == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]


def build_optimizer(module, cfg: RunConfig, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer for the bare model, and its name (for the start-up line). When DeepSpeed's extension does
    not build on some rank, every rank falls back to torch's AdamW (the same update, slower), after one line
    saying so: stopping would end a run that can train correctly."""
    kind = optimizer_kind(cfg.zero, device.type == "cuda")
    o = cfg.train.optim
    hyper = {"lr": o.lr, "betas": (o.adam_beta1, o.adam_beta2), "eps": o.adam_eps, "weight_decay": o.weight_decay}
    if kind != TORCH:
        failure = _build_failure(kind)
        if _all_ranks_built(failure is None, device):
            return _deepspeed_adam(kind, param_groups(module), hyper), kind
        if failure is not None:
            print(f" {kind} could not be built ({failure}); stepping torch's AdamW instead (same update, slower; "
                  "--use-torch-adamw skips the build)", flush=True)
    fused = o.fused_adam if o.fused_adam is not None else device.type == "cuda" or cfg.zero.offload_optimizer == "cpu"
    name = f"{TORCH} ({'fused' if fused else 'foreach'})"
    return torch.optim.AdamW(param_groups(module), fused=True if fused else None, **hyper), name


def _build_failure(kind: str) -> str | None:
    """None when DeepSpeed's extension for ``kind`` loads (compiling it on first use), else why not, in one line."""
    # deferred: DeepSpeed takes a second to import; only its engine needs it
    from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder

    builder = CPUAdamBuilder() if kind == CPU_ADAM else FusedAdamBuilder()
    try:
        builder.load(verbose=False)
    except Exception as e:  # a compiler error, a missing ninja or nvcc: the fallback covers all of them
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        return f"{type(e).__name__}: {lines[-1].strip()}"
    return None


def _all_ranks_built(built_here: bool, device: torch.device) -> bool:
    """Every rank steps the same optimizer: DeepSpeed's only where all of them built it."""
    if not dist.is_initialized():
        return built_here
    flag = torch.tensor([1 if built_here else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _deepspeed_adam(kind: str, groups: list[dict], hyper: dict) -> torch.optim.Optimizer:
    # deferred: DeepSpeed takes a second to import; only its engine needs it
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

    if kind == CPU_ADAM:
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **hyper)
    return FusedAdam(groups, adam_w_mode=True, **hyper)
