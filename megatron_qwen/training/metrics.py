"""What each logged iteration reports, and where it goes: the console line, a JSONL metrics
file, tensorboard and wandb. Only one rank writes (the last pipeline stage's first rank,
which is the one that knows the loss)."""

import json
import math
import os
import time
from dataclasses import dataclass

import torch

from megatron_qwen.config.arguments import LogSettings


@dataclass
class StepRecord:
    iteration: int
    train_iters: int
    consumed_samples: int
    consumed_tokens: int
    lm_loss: float
    lr: float
    grad_norm: float | None
    skipped_iterations: int
    elapsed_s: float  # wall time of this iteration
    tokens_per_sec: float  # whole job
    tokens_per_sec_per_gpu: float
    tflops_per_gpu: float
    mfu: float | None  # model FLOPs utilization, None without a known peak (CPU)
    peak_memory_gb: float | None
    loss_scale: float | None = None

    def line(self) -> str:
        parts = [
            f"iteration {self.iteration:8d}/{self.train_iters:8d}",
            f"consumed samples: {self.consumed_samples:12d}",
            f"consumed tokens: {self.consumed_tokens:14d}",
            f"elapsed time per iteration (ms): {self.elapsed_s * 1e3:.1f}",
            f"learning rate: {self.lr:.6E}",
            f"lm loss: {self.lm_loss:.6E}",
            f"grad norm: {self.grad_norm:.4f}" if self.grad_norm is not None else "grad norm: n/a",
            f"skipped iterations: {self.skipped_iterations}",
            f"tokens/s/GPU: {self.tokens_per_sec_per_gpu:.1f}",
            f"TFLOP/s/GPU: {self.tflops_per_gpu:.2f}",
            f"MFU: {self.mfu * 100:.1f}%" if self.mfu is not None else "MFU: n/a",
            f"ETA: {_duration(self.elapsed_s * (self.train_iters - self.iteration))}",
        ]
        if self.loss_scale is not None:
            parts.append(f"loss scale: {self.loss_scale:.1f}")
        if self.peak_memory_gb is not None:
            parts.append(f"peak mem (GB): {self.peak_memory_gb:.2f}")
        return " " + " | ".join(parts) + " |"

    def json(self) -> dict:
        return {
            "iteration": self.iteration, "lm_loss": self.lm_loss, "lr": self.lr,
            "grad_norm": self.grad_norm, "tokens_per_sec": self.tokens_per_sec,
            "tokens_per_sec_per_gpu": self.tokens_per_sec_per_gpu, "tflops_per_gpu": self.tflops_per_gpu,
            "mfu": self.mfu, "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_tokens, "skipped_iterations": self.skipped_iterations,
            "elapsed_ms": self.elapsed_s * 1e3, "time": time.time(),
        }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsSink:
    """Console, JSONL file, tensorboard and wandb, for the one rank that reports."""

    def __init__(self, settings: LogSettings, is_reporter: bool, run_config: dict):
        self.is_reporter = is_reporter
        self.metrics_file = None
        self.tb = None
        self.wandb_run = None
        if not is_reporter:
            return
        if settings.metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(settings.metrics_file)), exist_ok=True)
            self.metrics_file = open(settings.metrics_file, "a", buffering=1)
        if settings.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=settings.tensorboard_dir)
            self.tb.add_text("config", "```\n" + json.dumps(run_config, indent=1, default=str) + "\n```")
        if settings.wandb_project:
            self.wandb_run = _start_wandb(settings, run_config)

    def log_step(self, rec: StepRecord, console: bool) -> None:
        """Every iteration goes to the metrics file and dashboards; the console gets every
        --log-interval-th."""
        if not self.is_reporter:
            return
        if console:
            print(rec.line(), flush=True)
        if self.metrics_file:
            self.metrics_file.write(json.dumps(rec.json()) + "\n")
        scalars = {
            "train/lm_loss": rec.lm_loss, "train/lr": rec.lr, "train/grad_norm": rec.grad_norm,
            "throughput/tokens_per_sec_per_gpu": rec.tokens_per_sec_per_gpu,
            "throughput/tflops_per_gpu": rec.tflops_per_gpu, "throughput/mfu": rec.mfu,
            "memory/peak_gb": rec.peak_memory_gb,
        }
        self._scalars(scalars, rec.iteration)

    def log_eval(self, iteration: int, loss: float, split: str = "validation") -> None:
        if not self.is_reporter:
            return
        ppl = math.exp(min(loss, 50.0))
        print(f" {split} loss at iteration {iteration} | lm loss: {loss:.6E} | lm loss PPL: {ppl:.6E} |",
              flush=True)
        if self.metrics_file:
            self.metrics_file.write(json.dumps(
                {"iteration": iteration, f"{split}_loss": loss, f"{split}_ppl": ppl, "time": time.time()}) + "\n")
        self._scalars({f"{split}/lm_loss": loss, f"{split}/ppl": ppl}, iteration)

    def _scalars(self, scalars: dict, step: int) -> None:
        scalars = {k: v for k, v in scalars.items() if v is not None}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb_run:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.metrics_file:
            self.metrics_file.close()
        if self.tb:
            self.tb.close()
        if self.wandb_run:
            self.wandb_run.finish()


def _start_wandb(settings: LogSettings, run_config: dict):
    """wandb offline unless the user configured an API key; never a hang for lack of network."""
    import wandb

    has_key = bool(os.environ.get("WANDB_API_KEY")) or os.path.exists(os.path.expanduser("~/.netrc"))
    mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
    try:
        return wandb.init(
            project=settings.wandb_project, name=settings.wandb_exp_name, dir=settings.wandb_save_dir,
            config=run_config, mode=mode, settings=wandb.Settings(init_timeout=60, silent=True),
        )
    except Exception as e:  # a logging back end must never stop training
        print(f"warning: wandb could not start ({type(e).__name__}: {e}); continuing without it", flush=True)
        return None


class ThroughputMeter:
    """Wall time of each iteration and the throughput figures derived from it."""

    def __init__(self, flops_per_token: float, world_size: int, peak_tflops: float | None):
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak_tflops = peak_tflops
        self._t0 = time.perf_counter()

    def lap(self, tokens_per_iteration: int) -> tuple[float, float, float, float, float | None]:
        """(seconds since the last lap, tokens/s, tokens/s/GPU, TFLOP/s/GPU, MFU)."""
        now = time.perf_counter()
        seconds, self._t0 = now - self._t0, now
        tps = tokens_per_iteration / seconds
        tps_gpu = tps / self.world_size
        tflops = tps_gpu * self.flops_per_token / 1e12
        mfu = tflops / self.peak_tflops if self.peak_tflops else None
        return seconds, tps, tps_gpu, tflops, mfu

    def restart(self) -> None:
        """Leave evaluation and checkpoint time out of the next iteration's figures."""
        self._t0 = time.perf_counter()


def peak_memory_gb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
