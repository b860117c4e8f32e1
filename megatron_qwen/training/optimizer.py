"""AdamW (megatron-core's optimizer, distributed or not) and the learning-rate schedule."""

import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_qwen.config.optimizer import OptimizerSettings


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


def build_scheduler(optimizer, settings: OptimizerSettings, train_iters: int, global_batch_size: int):
    """Warmup then decay; steps are counted in samples, as Megatron-LM counts them."""
    decay_iters = settings.lr_decay_iters or train_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=settings.lr_warmup_iters * global_batch_size,
        lr_decay_steps=decay_iters * global_batch_size,
        lr_decay_style=settings.lr_decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=train_iters * global_batch_size,
        wd_incr_style="constant",
    )


def use_fused_adam(optimizer) -> bool:
    """Run the torch AdamW under megatron-core's optimizer with its fused kernel (a few launches per
    step instead of the default foreach implementation's many). megatron-core builds torch's AdamW
    only when neither transformer-engine nor apex is installed (with either, it uses their FusedAdam
    and this returns False). Call before the first step: the fused kernel keeps its step counters on
    the parameters' device, and the default one creates them on the CPU."""
    inner = [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]
    if not all(isinstance(o, torch.optim.AdamW) for o in inner):
        return False
    for o in inner:
        o.defaults.update(fused=True, foreach=False)
        for group in o.param_groups:
            group.update(fused=True, foreach=False)
    return True
