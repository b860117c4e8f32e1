"""AdamW (megatron-core's optimizer, distributed or not) and the learning-rate schedule."""

import math

import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_qwen.config.optimizer import OptimizerSettings
from megatron_qwen.platform.distributed import on_gpu


def build_optimizer(model_chunks, settings: OptimizerSettings, bf16: bool, use_distributed_optimizer: bool):
    config = OptimizerConfig(
        optimizer="adam",  # megatron-core's adam is AdamW (decoupled weight decay)
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, model_chunks)
    set_adam_kernel(optimizer, settings)
    _connect_to_schedules(model_chunks, optimizer)
    return optimizer


def _connect_to_schedules(model_chunks, optimizer) -> None:
    """The hooks megatron-core's pipeline schedules call around the backward passes."""
    config = model_chunks[0].config
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if model_chunks[0].ddp_config.overlap_grad_reduce:
        no_sync = [c.no_sync for c in model_chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        sync = [c.start_grad_sync for c in model_chunks]
        config.grad_sync_func = sync[0] if len(sync) == 1 else sync


class CosineWarmupScheduler(OptimizerParamScheduler):
    """megatron-core's schedule with the warmup on a half cosine, from the initial LR up to the peak
    (Code-Qwen-Chat, report section 4.2, docs/qwen.md section 5); the decay after it is unchanged."""

    def get_lr(self, param_group: dict) -> float:
        if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
            max_lr = param_group.get("max_lr", self.max_lr)
            rise = 0.5 * (1.0 - math.cos(math.pi * self.num_steps / self.lr_warmup_steps))
            return self.init_lr + (max_lr - self.init_lr) * rise
        return super().get_lr(param_group)


def build_scheduler(optimizer, settings: OptimizerSettings, train_iters: int, global_batch_size: int):
    """Warmup then decay; steps are counted in samples, as Megatron-LM counts them (a budget in samples or
    tokens gives them directly: config/budget.py)."""
    warmup = (settings.lr_warmup_samples if settings.lr_warmup_samples is not None
              else settings.lr_warmup_iters * global_batch_size)
    decay = (settings.lr_decay_samples if settings.lr_decay_samples is not None
             else (settings.lr_decay_iters or train_iters) * global_batch_size)
    scheduler = CosineWarmupScheduler if settings.lr_warmup_style == "cosine" else OptimizerParamScheduler
    return scheduler(
        optimizer,
        init_lr=settings.lr_warmup_init,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=settings.lr_decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=train_iters * global_batch_size,
        wd_incr_style="constant",
    )


def set_adam_kernel(optimizer, settings: OptimizerSettings) -> None:
    """torch's fused AdamW kernel (a few launches per step) where ``settings.fused_adam`` asks for it, by
    default on a GPU, where it halves the optimizer step (docs/PERFORMANCE.md); else its default
    (foreach) kernel. megatron-core builds torch's AdamW only when neither transformer-engine nor apex
    is installed; with either it uses their FusedAdam and this changes nothing. Called again after a
    checkpoint's optimizer state is loaded: torch restores the saved param groups, the kernel choice
    with them, and the fused kernel wants its step counters on the parameters' device."""
    fused = on_gpu() if settings.fused_adam is None else settings.fused_adam
    for o in (o for o in _torch_optimizers(optimizer) if type(o) is torch.optim.AdamW):
        for group in (o.defaults, *o.param_groups):
            group.update(fused=True if fused else None, foreach=False if fused else None)
        for param, state in o.state.items():
            if "step" in state:
                state["step"] = state["step"].to(param.device if fused else "cpu", torch.float32)


def _torch_adam_distributed(optimizer) -> list:
    """The distributed optimizers of the chain that step with torch's Adam/AdamW (no apex, no transformer-engine)."""
    return [o for o in getattr(optimizer, "chained_optimizers", [optimizer])
            if isinstance(o, DistributedOptimizer) and type(o.optimizer) in (torch.optim.Adam, torch.optim.AdamW)]


def allocate_state_for_load(optimizer) -> None:
    """Give every parameter its AdamW state before a checkpoint's is loaded over it. megatron-core builds a
    distributed optimizer's sharded state dict for a load from its state_dict(), which on torch's AdamW reads
    each parameter's step counter: absent before the first step (megatron-core 0.16.1 stops on an assertion).
    The moments come from megatron-core's own init_state_fn, the step is torch's; the load replaces both."""
    for opt in _torch_adam_distributed(optimizer):
        opt.init_state_fn(opt.optimizer, opt.config)
        for state in opt.optimizer.state.values():
            state.setdefault("step", torch.zeros((), dtype=torch.float32))


@torch.no_grad()  # fp32 main parameters are views of the model's: megatron-core's dp_reshardable copy needs it
def load_optimizer_state(optimizer, loaded: dict) -> None:
    """``optimizer.load_state_dict(loaded)``, around the handling of torch's AdamW step counter by megatron-core
    0.16.1's distributed optimizer: its fully_reshardable and model-space formats store the step once per group
    and then look for it per parameter (the parameter state is loaded here with the counters set aside); its
    dp_reshardable load copies the counters of the state the load was built from (zeros) over the saved one;
    and it gives all parameters one step tensor, which torch's AdamW then advances once per parameter. Each
    parameter gets its own counter at the saved step."""
    chain = getattr(optimizer, "chained_optimizers", [optimizer])
    parts = [loaded] if len(chain) == 1 else [v for _, v in sorted(loaded.items())]
    torch_adam = _torch_adam_distributed(optimizer)
    for opt, part in zip(chain, parts):
        if opt not in torch_adam:
            opt.load_state_dict(part)
            continue
        kind = part.get("param_state_sharding_type")
        stored_once = kind in ("fully_reshardable", "fully_sharded_model_space")
        opt.load_state_dict({k: v for k, v in part.items()
                             if not stored_once or k not in ("param_state", "param_state_sharding_type")})
        for state in opt.optimizer.state.values():
            state.pop("step", None)
        if stored_once:
            getattr(opt, f"load_parameter_state_from_{kind}")(part["param_state"])
        (step,) = {group["step"] for group in part["optimizer"]["param_groups"]}
        for state in opt.optimizer.state.values():
            state["step"] = torch.tensor(float(step), dtype=torch.float32)


def adam_kernel(optimizer) -> str:
    """Which AdamW kernel steps the weights: "fused", "foreach", or megatron-core's choice of another library."""
    inner = _torch_optimizers(optimizer)
    if not all(type(o) is torch.optim.AdamW for o in inner):
        return type(inner[0]).__module__ + "." + type(inner[0]).__name__
    return "fused" if all(g.get("fused") for o in inner for g in o.param_groups) else "foreach"


def _torch_optimizers(optimizer) -> list:
    """The optimizers megatron-core's wrapper (chained, for several parameter groups, or not) steps with."""
    return [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]
