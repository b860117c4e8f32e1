"""The layout search: every TP / PP / VP / CP / DP split, ZeRO variant and recompute setting that training
accepts on N GPUs, each with its peak memory per GPU and estimated step time (docs/planning.md)."""

import dataclasses
import itertools

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.run import RunConfig
from megatron_qwen.planning.hardware import Cluster
from megatron_qwen.planning.memory import RECOMPUTE, Layout, StageMemory, Workload, peak_stage
from megatron_qwen.planning.step_time import StepTime, step_time


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# DeepSpeed's variants: (ZeRO stage, optimizer offload, parameter offload)
DEEPSPEED_VARIANTS = ((1, False, False), (2, False, False), (3, False, False), (1, True, False), (2, True, False),
                      (3, True, False), (3, True, True))


def candidate_layouts(cfg: RunConfig, num_gpus: int, engines: str = "both") -> list[Layout]:
    """Every layout training accepts on ``num_gpus`` GPUs: RunConfig.validate's rules, plus the FFN width
    divisible by TP and megatron-core's interleaving rule (micro-batches a multiple of PP). Sequence
    parallelism is on whenever TP > 1: the same compute and communication, and activations divided by TP.
    ``engines``: "megatron", "deepspeed" or "both"."""
    layouts = []
    L = cfg.model.num_layers
    for tp, pp, cp in itertools.product(_divisors(num_gpus), repeat=3):
        if num_gpus % (tp * pp * cp) != 0 or cfg.model.ffn_hidden_size % tp != 0:
            continue
        dp = num_gpus // (tp * pp * cp)
        num_mb = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
        chunk_counts = [1]
        if pp > 1 and L % pp == 0 and num_mb % pp == 0:  # megatron-core interleaves whole groups of PP micro-batches
            chunk_counts += _divisors(L // pp)[1:]
        zeros = [(0, False, False), (-1, False, False)] if engines != "deepspeed" else []  # -1: megatron ZeRO-1
        zeros += list(DEEPSPEED_VARIANTS) if engines != "megatron" else []
        for vp, (stage, off_opt, off_param), recompute in itertools.product(chunk_counts, zeros, RECOMPUTE):
            if stage and dp * cp == 1:
                continue
            parallel = ParallelSettings(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                      num_layers_per_virtual_pipeline_stage=L // (pp * vp) if vp > 1 else None,
                                      context_parallel_size=cp, sequence_parallel=tp > 1)
            build = dataclasses.replace(cfg.build, recompute_granularity=recompute)
            zero = dataclasses.replace(cfg.zero, engine="deepspeed" if stage > 0 else "megatron", stage=abs(stage),
                                       offload_optimizer="cpu" if off_opt else "none",
                                       offload_param="cpu" if off_param else "none")
            try:
                dataclasses.replace(cfg, parallel=parallel, build=build, zero=zero).validate(num_gpus)
            except ConfigError:
                continue
            layouts.append(Layout(tp=tp, pp=pp, dp=dp, cp=cp, vp=vp, distributed_optimizer=stage == -1,
                                  recompute=recompute, deepspeed_stage=max(stage, 0), offload_optimizer=off_opt,
                                  offload_param=off_param))
    return layouts


@dataclasses.dataclass(frozen=True)
class Plan:
    layout: Layout
    memory: StageMemory  # the most loaded GPU
    time: StepTime


def plan(cfg: RunConfig, work: Workload, num_gpus: int, cluster: Cluster, engines: str = "both") -> list[Plan]:
    """Every valid layout with its peak memory and step time, fastest first (ties: less memory)."""
    plans = [Plan(layout, peak_stage(work, layout), step_time(work, layout, cluster))
             for layout in candidate_layouts(cfg, num_gpus, engines)]
    return sorted(plans, key=lambda p: (p.time.total, p.memory.total))


def pareto_front(plans: list[Plan]) -> list[Plan]:
    """The plans (sorted fastest first) that no other is at least as fast as and smaller than: each next
    one is slower but needs at least 1% less memory (finer differences are below the estimate's precision)."""
    front, smallest = [], float("inf")
    for p in plans:
        if p.memory.total < 0.99 * smallest:
            front.append(p)
            smallest = p.memory.total
    return front
