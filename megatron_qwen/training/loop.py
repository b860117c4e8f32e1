"""The training job, top to bottom: processes -> model -> data -> steps -> checkpoints."""

import signal

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import CheckpointSettings, TrainSettings
from megatron_qwen.model.flops import training_flops_per_token
from megatron_qwen.platform.distributed import compute_device, init_distributed
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.batches import microbatch_loader, next_global_batch
from megatron_qwen.training.datasets import build_datasets
from megatron_qwen.training.engine import Checkpointer, build_engine
from megatron_qwen.training.metrics import MetricsSink
from megatron_qwen.training.profiling import StepProfiler
from megatron_qwen.training.signals import ExitSignal
from megatron_qwen.training.step import run_microbatches


def train(cfg: RunConfig, world_size: int) -> dict:
    """Run the job ``cfg`` describes; returns the last logged figures (for tests and the demo)."""
    t, p = cfg.train, cfg.parallel
    banner = run_banner(cfg, world_size)
    init_distributed(p, cfg.model.num_layers, cfg.build.seed)
    device = compute_device()
    if dist.get_rank() == 0:
        print(banner, flush=True)

    # megatron-core DDP and distributed optimizer, or DeepSpeed ZeRO (--zero-engine): model, optimizer,
    # schedule and checkpoints.
    engine = build_engine(cfg, world_size, device)
    model, checkpointer = engine.model, engine.checkpointer
    state = checkpointer.load()
    flops_per_token = training_flops_per_token(cfg.model, t.seq_length, cfg.build.head)  # for TFLOP/s and MFU

    # Data: every rank reads its own micro-batches; no broadcast needed.
    train_ds, valid_sets, test_ds = build_datasets(cfg)
    num_mb = cfg.num_microbatches(world_size)
    loader = microbatch_loader(train_ds, state.consumed_samples, t.global_batch_size, t.micro_batch_size,
                               *_data_parallel_rank_and_size(), cfg.data.num_workers)

    sink = MetricsSink(cfg, world_size, flops_per_token)
    exit_signal = ExitSignal(cfg.checkpoint.exit_signal_handler, signal.Signals[cfg.checkpoint.exit_signal],
                             duration_mins=cfg.checkpoint.exit_duration_in_mins)
    health = StepHealth(t)
    profiler = StepProfiler(cfg.log, dist.get_rank())
    while state.iteration < t.train_iters:
        profiler.before_step(state.iteration)
        batches = next_global_batch(loader, num_mb)
        loss, grad_norm, ok, verdict = engine.train_step(batches, num_mb, health)
        state.advance(t.global_batch_size, ok)
        profiler.after_step(state.iteration)
        health.record(state.iteration, grad_norm, ok, verdict)  # reports skips; stops a streak of them
        sink.log_step(state.iteration, state.consumed_samples, state.skipped_iterations, loss,
                      engine.lr, grad_norm, engine.figures)
        if state.iteration % cfg.log.eval_interval == 0:
            for name, dataset in valid_sets.items():  # each validation set under its own name
                sink.log_eval(state.iteration, *evaluate(model, dataset, t, cfg.log.eval_iters, num_mb, device),
                              split=name)
        if save_or_exit(cfg.checkpoint, t.train_iters, checkpointer, state, exit_signal):
            break
        sink.meter.restart()  # evaluation and checkpoint time stay out of the next step's figures
    profiler.stop()
    if cfg.data.test_data_path and state.iteration == t.train_iters:  # --split's test part is only held out
        sink.log_eval(state.iteration, *evaluate(model, test_ds, t, cfg.log.eval_iters, num_mb, device), split="test")
    checkpointer.finish_pending(blocking=True)
    sink.close()
    return sink.last


def save_or_exit(ckpt: CheckpointSettings, train_iters: int, checkpointer: Checkpointer, state: TrainState,
                 exit_signal: ExitSignal) -> bool:
    """Save when due, or before stopping on SIGTERM or --exit-interval; True when the run stops now (also PPO's)."""
    checkpointer.finish_pending(blocking=False)
    exit_interval = ckpt.exit_interval
    signalled = exit_signal.received()
    if _save_due(ckpt, train_iters, state.iteration) or (signalled and ckpt.save):
        checkpointer.save(state)
    if signalled and dist.get_rank() == 0:
        print(f" {signalled}: stopping after iteration {state.iteration}", flush=True)
    return bool(signalled) or bool(exit_interval and state.iteration % exit_interval == 0)


def _save_due(ckpt: CheckpointSettings, train_iters: int, iteration: int) -> bool:
    """--save-interval's, --exit-interval's and the last iteration's checkpoints."""
    if not ckpt.save:
        return False
    if iteration == train_iters or (ckpt.exit_interval and iteration % ckpt.exit_interval == 0):
        return True
    return bool(ckpt.save_interval) and iteration % ckpt.save_interval == 0


def evaluate(model, dataset, t: TrainSettings, eval_iters: int, num_mb: int, device) -> tuple[float | None, dict]:
    """Mean loss (and figures: the reward model's accuracy and margin) over ``eval_iters`` (--eval-iters) global
    batches of ``t``'s size from the start of ``dataset`` (a validation set, or the test set)."""
    for chunk in model:
        chunk.eval()
    loader = microbatch_loader(dataset, 0, t.global_batch_size, t.micro_batch_size, *_data_parallel_rank_and_size())
    losses, figures = [], []
    with torch.no_grad():
        for _ in range(min(eval_iters, len(dataset) // t.global_batch_size)):
            batches = next_global_batch(loader, num_mb)
            figures.append({})
            losses.append(run_microbatches(model, [iter(batches) for _ in model], num_mb, t.seq_length,
                                           t.micro_batch_size, device, forward_only=True, figures=figures[-1]))
    for chunk in model:
        chunk.train()
    if not losses or losses[0] is None:
        return None, {}
    return sum(losses) / len(losses), {k: sum(f[k] for f in figures) / len(figures) for k in figures[0]}


def _data_parallel_rank_and_size() -> tuple[int, int]:
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def run_banner(cfg: RunConfig, world_size: int) -> str:
    """The run's layout and back end, then every resolved setting: what rank 0 prints first (also PPO's)."""
    p = cfg.parallel
    return (f"megatron-qwen {cfg.recipe}: {world_size} processes, TP{p.tensor_model_parallel_size} "
            f"PP{p.pipeline_model_parallel_size} DP{p.data_parallel_size(world_size)}, "
            f"back end {cfg.build.transformer_impl}, {cfg.build.precision}\n{cfg.describe()}")
