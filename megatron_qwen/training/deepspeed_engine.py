"""DeepSpeed ZeRO stages 1-3 as the data-parallel engine (docs/zero.md).

The model is the same megatron-core GPTModel (tensor-parallel layers included, layout-independent
initial weights); DeepSpeed takes it bare instead of megatron-core's DDP wrapper, with megatron-core's
process groups as its model-parallel unit. PP=1: each rank runs its micro-batches forward and backward
itself, and DeepSpeed reduces (stage 1), reduce-scatters (2) or also gathers parameters (3).

The loss stays token-weighted over the global batch (training/step.py): DeepSpeed averages gradients
over DP and divides by the accumulation steps, so each micro-batch's token-loss sum is scaled by
DP x accumulation / global token count before its backward.
"""

import dataclasses
import json
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config.arguments import RunConfig
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.zero import deepspeed_config
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import on_gpu
from megatron_qwen.training.anomalies import StepHealth, injects_nan
from megatron_qwen.training.checkpoint import (
    Checkpointer,
    TrainState,
    _data_state,
    _room_to_save,
    _set_rng_state,
    effective_load,
    load_weights,
    publish,
    resume_iteration,
    rng_states,
    staging_dir,
)
from megatron_qwen.training.checkpoint_dirs import iteration_dir, latest_iteration
from megatron_qwen.training.deepspeed_checkpoint import (
    MARKER,
    UNIVERSAL,
    is_deepspeed_checkpoint,
    load_deepspeed_weights,
    to_universal,
    universal_checkpoint_info,
    written_by_deepspeed,
)
from megatron_qwen.training.deepspeed_optimizer import build_optimizer
from megatron_qwen.training.optimizer import build_scheduler
from megatron_qwen.training.step import forward_step, reduce_loss


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
    """The deepspeed engine: what train() needs of an engine (model chunks for evaluation, the
    checkpointer, one training step, the LR)."""

    def __init__(self, cfg: RunConfig, world_size: int, device):
        deepspeed = _import_deepspeed()
        self.cfg, self.device = cfg, device
        t = cfg.train
        self.load = effective_load(cfg.checkpoint)
        module = build_model(cfg)[0]
        if on_gpu():
            module = module.cuda(torch.cuda.current_device())
        self._load_weights_before_sharding(module)
        self._sp_hooks = sum_sequence_parallel_grads(module) if cfg.parallel.sequence_parallel else []
        # DeepSpeed saves it with the model states: what ds_to_universal needs to merge the TP slices
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        setattr(module, UNIVERSAL_CHECKPOINT_INFO, universal_checkpoint_info(module))
        self.ds_config = deepspeed_config(
            cfg.zero, t.global_batch_size, t.micro_batch_size, cfg.parallel.data_parallel_size(world_size),
            t.optim.clip_grad, cfg.build.precision == "bf16", cfg.parallel.overlap_grad_reduce)
        optimizer, self.optimizer_name = build_optimizer(module, cfg, device)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=self.ds_config,
                                               mpu=MegatronParallelUnit(), dist_init_required=False)
        # The schedule sets the LR and weight decay of the AdamW groups DeepSpeed steps with.
        self.scheduler = build_scheduler(optimizer, t.optim, t.train_iters, t.global_batch_size)
        self._optimizer = optimizer
        self.model = [self.engine.module]  # for evaluation: stage 3 gathers through hooks on the module
        self.checkpointer = DeepSpeedCheckpointer(self)
        if dist.get_rank() == 0:
            print(f" DeepSpeed config: {json.dumps(self.ds_config, sort_keys=True)}; optimizer: {self.optimizer_name}",
                  flush=True)

    @property
    def lr(self) -> float:
        return self._optimizer.param_groups[0]["lr"]

    def _load_weights_before_sharding(self, module) -> None:
        """Weights-only starts (--finetune, a Hugging Face or converted --load) fill the bare model
        before DeepSpeed partitions it; resumes of a DeepSpeed checkpoint load after (load())."""
        s = self.load
        if not s.load or not s.finetune:
            return
        from megatron_qwen.hf.source import is_hf_dir

        if is_deepspeed_checkpoint(s.load):
            load_deepspeed_weights(iteration_dir(s.load, latest_iteration(s.load)), module)
        elif is_hf_dir(s.load):
            from megatron_qwen.hf.load import load_hf_weights

            load_hf_weights(s.load, [module], progress=dist.get_rank() == 0)
        else:
            load_weights(iteration_dir(s.load, latest_iteration(s.load)), [module])
        if dist.get_rank() == 0:
            print(f" loaded weights only from {s.load}; continuing at iteration 0", flush=True)

    def train_step(self, microbatches: list[dict], num_microbatches: int, iteration: int, health: StepHealth):
        """One optimizer step over this rank's micro-batches. Returns (loss, grad_norm, update_successful).
        A non-finite step is skipped by DeepSpeed itself (every stage discards a step whose gradient norm is
        not finite); ``health`` names the data-parallel ranks whose loss was, and the LR stays where it was."""
        engine, dp_group = self.engine, parallel_state.get_data_parallel_group()
        tokens = torch.stack([mb["loss_mask"].sum() for mb in microbatches]).sum().float().to(self.device)
        dist.all_reduce(tokens, group=dp_group)
        scale = num_microbatches * parallel_state.get_data_parallel_world_size() / tokens.clamp(min=1)
        local = torch.zeros(2, device=self.device)
        poison = [True] if injects_nan(iteration) else None
        for mb in microbatches:
            output, loss_func = forward_step(iter([mb]), engine, self.device, poison=poison)
            loss_sum, _, report = loss_func(output)
            engine.backward(loss_sum * scale)
            engine.step()  # DeepSpeed steps the optimizer at the last micro-batch of the accumulation
            local += report["lm loss"]
        loss = reduce_loss(local)
        health.judge(local, loss)  # for the report; --skip-loss-spikes is refused with this engine
        applied = engine.was_step_applied()
        if applied:
            self.scheduler.step(increment=self.cfg.train.global_batch_size)
        return loss, float(engine.get_global_grad_norm()), applied


class DeepSpeedCheckpointer(Checkpointer):
    """DeepSpeed's own checkpoint files under our directory layout (iter_NNNNNNN/, the tracker file),
    written under a staging name and published whole. Resumes at the same TP x DP layout and ZeRO stage as
    it is, at any other through DeepSpeed's universal checkpoint, with the optimizer state."""

    def __init__(self, ds: DeepSpeedEngine):
        super().__init__(ds.cfg, ds.model, None, ds.scheduler)
        self.ds = ds

    def save(self, state: TrainState) -> None:
        cfg, engine = self.cfg, self.ds.engine
        root, iteration = cfg.checkpoint.save, state.iteration
        if not _room_to_save(root, iteration):
            return
        staging = staging_dir(root, iteration)
        if dist.get_rank() == 0:
            os.makedirs(root, exist_ok=True)
        dist.barrier()
        client_state = {"train_state": dataclasses.asdict(state), "scheduler": self.scheduler.state_dict(),
                        "rng_state": rng_states(), "data_state": _data_state(cfg)}
        engine.save_checkpoint(root, tag=os.path.basename(staging), client_state=client_state, save_latest=False)
        dist.barrier()
        if dist.get_rank() == 0:
            with open(os.path.join(staging, MARKER), "w") as f:
                json.dump({"zero_stage": cfg.zero.stage, "layout": _layout(), "universal_checkpoint_info": True,
                           "deepspeed_config": self.ds.ds_config, "run_config": cfg.to_dict()}, f, indent=1)
            publish(root, iteration, staging, cfg.checkpoint.keep_last_checkpoints)
        dist.barrier()

    def load(self) -> TrainState:
        s = self.ds.load
        iteration = None if s.finetune else resume_iteration(s)  # finetune: weights loaded before sharding
        if iteration is None:
            return TrainState()
        ckpt_dir = iteration_dir(s.load, iteration)
        if not written_by_deepspeed(ckpt_dir):
            raise ConfigError(f"--load {ckpt_dir} is a megatron-engine checkpoint; resume it with --zero-engine "
                              "megatron, or start from its weights with --finetune")
        with open(os.path.join(ckpt_dir, MARKER)) as f:
            saved = json.load(f)
        changed = saved["layout"] != _layout() or saved["zero_stage"] != self.cfg.zero.stage
        client = self._load_universal(ckpt_dir) if changed else self.ds.engine.load_checkpoint(
            s.load, tag=os.path.basename(ckpt_dir), load_optimizer_states=not s.no_load_optim,
            load_lr_scheduler_states=False)[1]
        if not s.override_data_state and client["data_state"] != _data_state(self.cfg):
            raise ConfigError(f"--load {ckpt_dir} was saved with data settings {client['data_state']} but this run "
                              f"has {_data_state(self.cfg)}; pass --override-data-state to resume anyway")
        self.scheduler.load_state_dict(client["scheduler"])
        if not s.no_load_rng and not changed:  # each rank's saved RNG belongs to its place in the saved layout
            _set_rng_state(client["rng_state"])
        state = TrainState(**client["train_state"])
        if dist.get_rank() == 0:
            how = (f" through a universal checkpoint (ZeRO-{saved['zero_stage']} at {saved['layout']} -> "
                   f"ZeRO-{self.cfg.zero.stage} at {_layout()}; fresh RNG states)" if changed else "")
            print(f" loaded DeepSpeed ZeRO-{saved['zero_stage']} checkpoint {ckpt_dir}{how}; continuing at iteration "
                  f"{state.iteration}", flush=True)
        return state

    def _load_universal(self, ckpt_dir: str) -> dict:
        """Resume at another TP x DP layout or ZeRO stage: DeepSpeed's universal checkpoint of ``ckpt_dir``
        (converted by rank 0 on the first such resume), loaded with its universal loader, which re-slices the
        fp32 weights and Adam moments for this layout. Returns the client state (of a saved rank)."""
        failure = [None]  # rank 0's, told to every rank so that none waits for a conversion that failed
        if dist.get_rank() == 0:
            try:
                to_universal(ckpt_dir)
            except Exception as e:
                failure[0] = f"converting {ckpt_dir} to a universal checkpoint failed: {type(e).__name__}: {e}"
                dist.broadcast_object_list(failure, src=0)
                raise
        dist.broadcast_object_list(failure, src=0)
        if failure[0]:
            raise RuntimeError(failure[0])
        engine, groups = self.ds.engine, self.ds._optimizer.param_groups
        # ZeRO-3's universal load gives every parameter group the first one's hyperparameters (deepspeed 0.19.8,
        # stage3.py), the no-decay group its wd_mult too; the groups' own come from the flags and the schedule.
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        engine._config.load_universal_checkpoint = True  # read by load_checkpoint only; set at load, not start
        try:
            _, client = engine.load_checkpoint(ckpt_dir, tag=UNIVERSAL, load_lr_scheduler_states=False,
                                               load_optimizer_states=not self.ds.load.no_load_optim)
        finally:
            engine._config.load_universal_checkpoint = False
        for group, own in zip(groups, hyper):
            group.update(own)
        return client

    def finish_pending(self, blocking: bool) -> None:
        """Saves are synchronous (--async-save is refused for this engine)."""


def _layout() -> dict:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size()}


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
    inner = ds._optimizer
    moments = sum(v.numel() * v.element_size() for st in inner.state.values() for v in st.values()
                  if torch.is_tensor(v) and v.dim() > 0)
    master = sum(t.numel() * t.element_size() for t in master_partitions(ds.engine.optimizer))
    params = sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in ds.engine.module.parameters())
    return {"adam_moments": moments, "fp32_master": master, "parameters": params}
