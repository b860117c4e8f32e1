"""DeepSpeed ZeRO stages 1-3 as the data-parallel engine (docs/zero.md).

The model is the same megatron-core GPTModel (tensor-parallel layers included, layout-independent
initial weights); DeepSpeed takes it bare instead of megatron-core's DDP wrapper, with megatron-core's
process groups as its model-parallel unit. PP=1: each rank runs its micro-batches forward and backward
itself, and DeepSpeed reduces (stage 1), reduce-scatters (2) or also gathers parameters (3).

The loss stays token-weighted over the global batch (training/step.py; the reward model's: pair-weighted):
DeepSpeed averages gradients over DP and divides by the accumulation steps, so each micro-batch's loss sum is
scaled by DP x accumulation / global token (pair) count before its backward.
"""

import json

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.checkpointing.deepspeed_format import universal_checkpoint_info
from megatron_qwen.checkpointing.resolver import Start
from megatron_qwen.config.run import RunConfig
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import on_gpu
from megatron_qwen.training.anomalies import StepHealth, Verdict
from megatron_qwen.training.deepspeed_checkpoint import DeepSpeedCheckpointer
from megatron_qwen.training.deepspeed_optimizer import build_optimizer
from megatron_qwen.training.optimizer import build_scheduler
from megatron_qwen.training.step import forward_step, objective_of, reduce_report


class MegatronParallelUnit:
    """megatron-core's parallel state under the names DeepSpeed calls (its ``mpu``). With PP=1 the
    model-parallel group is the tensor-parallel one."""

    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(parallel_state.get_tensor_model_parallel_src_rank)
    get_pipeline_model_parallel_group = staticmethod(parallel_state.get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(parallel_state.get_pipeline_model_parallel_world_size)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)


def _import_deepspeed():
    """Import DeepSpeed so that nothing compiles: its communication wrapper builds the shared-memory
    C++ op even over gloo unless that op is marked unavailable first."""
    # deferred: DeepSpeed takes a second to import; only --zero-engine deepspeed needs it
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def sum_sequence_parallel_grads(module) -> list:
    """Under sequence parallelism each tensor-parallel rank's gradient of a replicated parameter that
    megatron-core marks ``sequence_parallel`` (the norms) covers only its share of the sequence; sum it over
    the TP group, as megatron-core's grad finalization does for its DDP. The sum runs in a hook on each
    incoming micro-batch gradient, before it is accumulated: DeepSpeed's own hooks run after accumulation
    and reduce (ZeRO-2/3: reduce-scatter) the accumulated gradient at once, so this is the last point where
    every stage still holds the parameter's full gradient. Sums in fp32; returns the hook handles."""
    group = parallel_state.get_tensor_model_parallel_group()
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return []

    def summed_over_tp(grad: torch.Tensor) -> torch.Tensor:
        total = grad.float()  # a copy for bf16; for fp32 the clone keeps the incoming tensor untouched
        total = total.clone() if total is grad else total
        dist.all_reduce(total, group=group)
        return total.to(grad.dtype)

    return [p.register_hook(summed_over_tp) for p in module.parameters()
            if p.requires_grad and getattr(p, "sequence_parallel", False)]


class DeepSpeedEngine:
    """The engine train() steps (training/engine.py's Engine) on DeepSpeed ZeRO."""

    def __init__(self, cfg: RunConfig, world_size: int, device, start: Start):
        deepspeed = _import_deepspeed()
        self.cfg, self.device = cfg, device
        t = cfg.train
        module = build_model(cfg.model, cfg.parallel, cfg.build, megatron_ddp=False)[0]
        if on_gpu():
            module = module.cuda(torch.cuda.current_device())
        self._sp_hooks = sum_sequence_parallel_grads(module) if cfg.parallel.sequence_parallel else []
        # deferred: DeepSpeed is imported for this engine only (_import_deepspeed)
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        # DeepSpeed saves it with the model states: what ds_to_universal needs to merge the TP slices
        setattr(module, UNIVERSAL_CHECKPOINT_INFO, universal_checkpoint_info(module))
        ds_config = cfg.effective_deepspeed_config(world_size)
        self.optimizer, optimizer_name = build_optimizer(module, cfg, device)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=self.optimizer, config=ds_config,
                                               mpu=MegatronParallelUnit(), dist_init_required=False)
        # The schedule sets the LR and weight decay of the AdamW groups DeepSpeed steps with.
        self.scheduler = build_scheduler(self.optimizer, t.optim, t.train_iters, t.global_batch_size)
        self.model = [self.engine.module]  # for evaluation: stage 3 gathers through hooks on the module
        self.figures: dict[str, float] = {}
        self.checkpointer = DeepSpeedCheckpointer(cfg, self.engine, self.optimizer, self.scheduler, ds_config, start)
        if dist.get_rank() == 0:
            print(f" DeepSpeed config: {json.dumps(ds_config, sort_keys=True)}; optimizer: {optimizer_name}",
                  flush=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, microbatches: list[dict], num_microbatches: int,
                   health: StepHealth) -> tuple[float | None, float | None, bool, Verdict]:
        """One optimizer step over this rank's micro-batches. Returns (loss, grad_norm, update_successful,
        the health verdict).
        A non-finite step is skipped by DeepSpeed itself (every stage discards a step whose gradient norm is
        not finite); ``health`` names the data-parallel ranks whose loss was, and the LR stays where it was."""
        engine, dp_group, objective = self.engine, parallel_state.get_data_parallel_group(), objective_of(self.engine)
        tokens = torch.stack([objective.count(mb) for mb in microbatches]).sum().float().to(self.device)
        dist.all_reduce(tokens, group=dp_group)
        scale = num_microbatches * parallel_state.get_data_parallel_world_size() / tokens.clamp(min=1)
        local = 0
        for mb in microbatches:
            output, loss_func = forward_step(iter([mb]), engine, self.device)
            loss_sum, _, report = loss_func(output)
            engine.backward(loss_sum * scale)
            engine.step()  # DeepSpeed steps the optimizer at the last micro-batch of the accumulation
            local = local + torch.cat(list(report.values()))
        loss, *figures = reduce_report(local)
        self.figures = dict(zip(objective.figures, figures))
        verdict = health.judge(local, loss)  # for the report; --skip-loss-spikes is refused with this engine
        applied = engine.was_step_applied()
        if applied:
            self.scheduler.step(increment=self.cfg.train.global_batch_size)
        return loss, float(engine.get_global_grad_norm()), applied, verdict


def master_partitions(zero_optimizer) -> list:
    """This rank's partitions of the master weights the optimizer steps: ZeRO-1/2's, ZeRO-3's, or those of the
    optimizer DeepSpeed picks for bf16 at stage 1 with fp32 gradient accumulation (BF16_Optimizer)."""
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition"):
        if hasattr(zero_optimizer, name):
            return getattr(zero_optimizer, name)
    raise TypeError(f"no master weight partitions known in {type(zero_optimizer).__name__}")


def sharded_state_bytes(ds: DeepSpeedEngine) -> dict:
    """Bytes this rank holds of Adam's two moments, of the fp32 master partitions the optimizer steps, and of
    the parameters (stage 3: its partitions)."""
    inner = ds.optimizer
    moments = sum(v.numel() * v.element_size() for st in inner.state.values() for v in st.values()
                  if torch.is_tensor(v) and v.dim() > 0)
    master = sum(t.numel() * t.element_size() for t in master_partitions(ds.engine.optimizer))
    params = sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in ds.engine.module.parameters())
    return {"adam_moments": moments, "fp32_master": master, "parameters": params}
