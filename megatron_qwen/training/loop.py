"""The training job, top to bottom: processes -> model -> data -> steps -> checkpoints."""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.core import parallel_state

from megatron_qwen.config.arguments import RunConfig
from megatron_qwen.model.builder import ModelBuildOptions, build_model_chunks, transformer_config, wrap_for_training
from megatron_qwen.model.flops import peak_tflops, training_flops_per_token
from megatron_qwen.platform.distributed import init_distributed, on_gpu
from megatron_qwen.training import checkpoint
from megatron_qwen.training.batches import microbatch_loader, next_global_batch
from megatron_qwen.training.datasets import build_datasets
from megatron_qwen.training.metrics import MetricsSink, StepRecord, ThroughputMeter, peak_memory_gb
from megatron_qwen.training.optimizer import build_optimizer, build_scheduler
from megatron_qwen.training.signals import ExitSignal
from megatron_qwen.training.step import run_microbatches, train_step


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0


def train(cfg: RunConfig, world_size: int) -> dict:
    t, p = cfg.train, cfg.parallel
    init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                     p.virtual_pipeline_size(cfg.model.num_layers), p.context_parallel_size, t.seed,
                     t.distributed_timeout_minutes)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")
    is_reporter = _is_reporter()
    if dist.get_rank() == 0:
        print(f"megatron-qwen {cfg.recipe}: {world_size} processes, TP{p.tensor_model_parallel_size} "
              f"PP{p.pipeline_model_parallel_size} DP{p.data_parallel_size(world_size)}, "
              f"back end {t.transformer_impl}, {t.precision}", flush=True)
        print(cfg.describe(), flush=True)

    # Model, optimizer, schedule.
    opts = ModelBuildOptions(backend=t.transformer_impl, precision=t.precision,
                             hidden_dropout=t.hidden_dropout, attention_dropout=t.attention_dropout,
                             recompute_granularity=t.recompute_granularity,
                             recompute_num_layers=t.recompute_num_layers, seed=t.seed)
    tcfg = transformer_config(cfg.model, p, opts, on_gpu=on_gpu())
    model = wrap_for_training(build_model_chunks(cfg.model, tcfg, opts), tcfg, p, on_gpu=on_gpu())
    optimizer = build_optimizer(model, t.optim, bf16=t.precision == "bf16",
                                use_distributed_optimizer=p.use_distributed_optimizer)
    scheduler = build_scheduler(optimizer, t.optim, t.train_iters, t.global_batch_size)
    state = TrainState(**checkpoint.load(cfg, model, optimizer, scheduler))

    # Data: every rank reads its own micro-batches; no broadcast needed.
    train_ds, valid_ds, _ = build_datasets(cfg)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_mb = cfg.num_microbatches(world_size)
    loader = microbatch_loader(train_ds, state.consumed_samples, t.global_batch_size, t.micro_batch_size,
                               dp_rank, dp_size, cfg.data.num_workers)

    sink = MetricsSink(cfg.log, is_reporter, cfg.to_dict())
    device_name = torch.cuda.get_device_name() if on_gpu() else "cpu"
    meter = ThroughputMeter(training_flops_per_token(cfg.model, t.seq_length), world_size, peak_tflops(device_name))
    tokens_per_iter = t.global_batch_size * t.seq_length
    exit_signal = ExitSignal(cfg.checkpoint.exit_signal_handler)
    last = {}
    while state.iteration < t.train_iters:
        batches = next_global_batch(loader, num_mb)
        loss, grad_norm, ok = train_step(model, optimizer, scheduler, [iter(batches) for _ in model], num_mb,
                                         t.seq_length, t.micro_batch_size, t.global_batch_size, device)
        state.iteration += 1
        state.consumed_samples += t.global_batch_size
        state.skipped_iterations += 0 if ok else 1
        per_iter, tps, tps_gpu, tflops, mfu = meter.lap(tokens_per_iter)
        if is_reporter:
            rec = StepRecord(
                iteration=state.iteration, train_iters=t.train_iters, consumed_samples=state.consumed_samples,
                consumed_tokens=state.consumed_samples * t.seq_length, lm_loss=loss,
                lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                skipped_iterations=state.skipped_iterations, elapsed_s=per_iter, tokens_per_sec=tps,
                tokens_per_sec_per_gpu=tps_gpu, tflops_per_gpu=tflops, mfu=mfu, peak_memory_gb=peak_memory_gb(),
            )
            console = state.iteration % cfg.log.log_interval == 0 or state.iteration == t.train_iters
            sink.log_step(rec, console)
            last = rec.json()
        if valid_ds is not None and state.iteration % cfg.log.eval_interval == 0:
            val = evaluate(cfg, model, valid_ds, num_mb, dp_rank, dp_size, device)
            if is_reporter:
                sink.log_eval(state.iteration, val)
                last["validation_loss"] = val
        checkpoint.finish_pending_saves(blocking=False)
        stop = exit_signal.received()
        if checkpoint.due(cfg.checkpoint, state.iteration, t.train_iters) or (stop and cfg.checkpoint.save):
            checkpoint.save(cfg, state.__dict__, model, optimizer, scheduler)
        if stop:
            if dist.get_rank() == 0:
                print(f" exit signal received: stopping after iteration {state.iteration}", flush=True)
            break
        if cfg.checkpoint.exit_interval and state.iteration % cfg.checkpoint.exit_interval == 0:
            break
        meter.restart()
    checkpoint.finish_pending_saves(blocking=True)
    sink.close()
    return last


def evaluate(cfg: RunConfig, model, dataset, num_mb: int, dp_rank: int, dp_size: int, device) -> float | None:
    """Mean loss over ``--eval-iters`` global batches from the start of the validation split."""
    t = cfg.train
    for chunk in model:
        chunk.eval()
    loader = microbatch_loader(dataset, 0, t.global_batch_size, t.micro_batch_size, dp_rank, dp_size)
    losses = []
    with torch.no_grad():
        for _ in range(min(cfg.log.eval_iters, len(dataset) // t.global_batch_size)):
            batches = next_global_batch(loader, num_mb)
            losses.append(run_microbatches(model, [iter(batches) for _ in model], num_mb, t.seq_length,
                                           t.micro_batch_size, device, forward_only=True))
    for chunk in model:
        chunk.train()
    if not losses or losses[0] is None:
        return None
    return sum(losses) / len(losses)


def _is_reporter() -> bool:
    """The last pipeline stage's first rank: it alone knows the loss without communication."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0)
