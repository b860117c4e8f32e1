"""What each logged iteration reports, and where it goes: the console line, a JSONL metrics
file, tensorboard and wandb. Only one rank writes (the last pipeline stage's first rank,
which is the one that knows the loss)."""

import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state
from torch.utils.tensorboard import SummaryWriter

from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import LogSettings
from megatron_qwen.data.progress import format_duration
from megatron_qwen.model.flops import peak_tflops
from megatron_qwen.training.step import OBJECTIVES


@dataclass
class StepRecord:
    iteration: int
    train_iters: int
    consumed_samples: int
    consumed_tokens: int
    lm_loss: float | None
    lr: float
    grad_norm: float | None
    skipped_iterations: int
    elapsed_s: float  # wall time of this iteration
    tokens_per_sec: float  # whole job
    tokens_per_sec_per_gpu: float
    tflops_per_gpu: float
    mfu: float | None  # model FLOPs utilization, None without a known peak (CPU)
    peak_memory_gb: float | None
    loss_name: str = "lm loss"  # the objective's (training/step.py)
    figures: dict = field(default_factory=dict)  # the objective's figures besides the loss, by name

    def line(self) -> str:
        parts = [
            f"iteration {self.iteration:8d}/{self.train_iters:8d}",
            f"consumed samples: {self.consumed_samples:12d}",
            f"consumed tokens: {self.consumed_tokens:14d}",
            f"elapsed time per iteration (ms): {self.elapsed_s * 1e3:.1f}",
            f"learning rate: {self.lr:.6E}",
            f"{self.loss_name}: {self.lm_loss:.6E}",
            *(f"{name}: {value:.4f}" for name, value in self.figures.items()),
            f"grad norm: {self.grad_norm:.4f}" if self.grad_norm is not None else "grad norm: n/a",
            f"skipped iterations: {self.skipped_iterations}",
            f"tokens/s/GPU: {self.tokens_per_sec_per_gpu:.1f}",
            f"TFLOP/s/GPU: {self.tflops_per_gpu:.2f}",
            f"MFU: {self.mfu * 100:.1f}%" if self.mfu is not None else "MFU: n/a",
            f"ETA: {format_duration(self.elapsed_s * (self.train_iters - self.iteration))}",
        ]
        if self.peak_memory_gb is not None:
            parts.append(f"peak mem (GB): {self.peak_memory_gb:.2f}")
        return " " + " | ".join(parts) + " |"

    def json(self) -> dict:
        return {
            "iteration": self.iteration, "train_iters": self.train_iters, _key(self.loss_name): self.lm_loss,
            **{_key(name): value for name, value in self.figures.items()}, "lr": self.lr,
            "grad_norm": self.grad_norm, "tokens_per_sec": self.tokens_per_sec,
            "tokens_per_sec_per_gpu": self.tokens_per_sec_per_gpu, "tflops_per_gpu": self.tflops_per_gpu,
            "mfu": self.mfu, "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_tokens, "skipped_iterations": self.skipped_iterations,
            "elapsed_ms": self.elapsed_s * 1e3, "time": time.time(),
        }


class MetricsSink:
    """Console, JSONL file, tensorboard and wandb. Only the last pipeline stage's first rank
    reports (it alone knows the loss without communication); on every other rank this is a no-op."""

    def __init__(self, cfg: RunConfig, world_size: int, flops_per_token: float, loss_name: str | None = None):
        """``flops_per_token``: the model's training FLOPs per token (model/flops.py), behind TFLOP/s and MFU;
        ``loss_name``: the loss logged, where not the model head's objective's (PPO's policy loss)."""
        self.settings = cfg.log
        self.train_iters, self.seq_length = cfg.train.train_iters, cfg.train.seq_length
        self.tokens_per_iteration = cfg.train.global_batch_size * cfg.train.seq_length
        self.loss_name = loss_name or OBJECTIVES[cfg.build.head].loss_name
        self.is_reporter = (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
                            and parallel_state.get_tensor_model_parallel_rank() == 0
                            and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.meter = ThroughputMeter(flops_per_token, world_size, peak_tflops(device))
        self.last: dict = {}  # the last logged figures, returned by train()
        self.metrics_file = None
        self.tb = None
        self.wandb_run = None
        if not self.is_reporter:
            return
        settings, run_config = cfg.log, cfg.to_dict()
        if settings.metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(settings.metrics_file)), exist_ok=True)
            self.metrics_file = open(settings.metrics_file, "a", buffering=1)
        if settings.tensorboard_dir:
            self.tb = SummaryWriter(log_dir=settings.tensorboard_dir)
            self.tb.add_text("config", "```\n" + json.dumps(run_config, indent=1, default=str) + "\n```")
        if settings.wandb_project:
            self.wandb_run = _start_wandb(settings, run_config)

    def log_step(self, iteration: int, consumed_samples: int, skipped_iterations: int, loss: float | None,
                 lr: float, grad_norm: float | None, figures: dict | None = None) -> None:
        """Every iteration goes to the metrics file and dashboards; the console gets every
        --log-interval-th (and the last)."""
        seconds, tps, tps_gpu, tflops, mfu = self.meter.lap(self.tokens_per_iteration)
        if not self.is_reporter:
            return
        rec = StepRecord(
            iteration=iteration, train_iters=self.train_iters, consumed_samples=consumed_samples,
            consumed_tokens=consumed_samples * self.seq_length, lm_loss=loss, lr=lr, grad_norm=grad_norm,
            skipped_iterations=skipped_iterations, elapsed_s=seconds, tokens_per_sec=tps,
            tokens_per_sec_per_gpu=tps_gpu, tflops_per_gpu=tflops, mfu=mfu, peak_memory_gb=peak_memory_gb(),
            loss_name=self.loss_name, figures=dict(figures or {}),
        )
        if iteration % self.settings.log_interval == 0 or iteration == self.train_iters:
            print(rec.line(), flush=True)
        self.last = rec.json()
        if self.metrics_file:
            self.metrics_file.write(json.dumps(self.last) + "\n")
        scalars = {
            f"train/{_key(self.loss_name)}": rec.lm_loss, **{f"train/{_key(k)}": v for k, v in rec.figures.items()},
            "train/lr": rec.lr, "train/grad_norm": rec.grad_norm,
            "throughput/tokens_per_sec_per_gpu": rec.tokens_per_sec_per_gpu,
            "throughput/tflops_per_gpu": rec.tflops_per_gpu, "throughput/mfu": rec.mfu,
            "memory/peak_gb": rec.peak_memory_gb,
        }
        self._scalars(scalars, rec.iteration)

    def log_eval(self, iteration: int, loss: float | None, figures: dict | None = None,
                 split: str = "validation") -> None:
        """The validation loss; a language model's perplexity, or the objective's figures (the reward model's)."""
        if not self.is_reporter or loss is None:
            return
        self.last[f"{split}_loss"] = loss
        if figures:
            shown = {_key(k): v for k, v in figures.items()}
            parts = [f"{self.loss_name}: {loss:.6E}", *(f"{k}: {v:.4f}" for k, v in figures.items())]
        else:
            shown = {"ppl": math.exp(min(loss, 50.0))}
            parts = [f"lm loss: {loss:.6E}", f"lm loss PPL: {shown['ppl']:.6E}"]
        print(f" {split} loss at iteration {iteration} | " + " | ".join(parts) + " |", flush=True)
        if self.metrics_file:
            self.metrics_file.write(json.dumps({"iteration": iteration, f"{split}_loss": loss,
                                                **{f"{split}_{k}": v for k, v in shown.items()},
                                                "time": time.time()}) + "\n")
        self._scalars({f"{split}/{_key(self.loss_name)}": loss, **{f"{split}/{k}": v for k, v in shown.items()}},
                      iteration)

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


def _key(name: str) -> str:
    """A logged figure's name in the metrics file and dashboards: "lm loss" -> "lm_loss"."""
    return name.replace(" ", "_")


def _start_wandb(settings: LogSettings, run_config: dict):
    """wandb offline unless the user configured an API key; never a hang for lack of network."""
    # deferred: wandb takes half a second to import; only --wandb-project needs it
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
