"""Training throughput of one model shape on synthetic tokens, and where a step's time goes.

    python bench/bench_train.py                     # CPU: tiny preset, seq 256, micro-batch 4; seconds
    python bench/bench_train.py --model-size 1.8b --bf16 --seq-length 2048 --micro-batch-size 2 \\
        --global-batch-size 16                      # one GPU
    python bench/bench_train.py --model-size 7b --bf16 --seq-length 2048 --micro-batch-size 1 \\
        --tensor-model-parallel-size 2 --nproc 8    # one 8-GPU node (same as torchrun ... bench/bench_train.py)

Every flag of `python -m megatron_qwen.pretrain` applies (preset, shape overrides such as
--num-layers, --transformer-impl, --recompute-granularity, --bf16, the parallel layout). The model
is built by build_model_and_optimizer and stepped by train_step exactly as training steps it, on random tokens
(no data files, no tokenizer). --warmup steps run first and are dropped (allocator growth,
compilation of megatron-core's fused kernels); then --iters steps are timed. --global-batch-size
defaults to one micro-batch per data-parallel rank.

Printed: median step time, tokens/s per GPU, model TFLOP/s per GPU (FLOPs per token from
megatron_qwen/model/flops.py; recompute not counted), MFU against the GPU's dense bf16 peak
(989 TFLOP/s for an H100 SXM; --peak-tflops overrides), peak memory, and a breakdown of the
step: forward and backward compute, communication (gradient reduction, TP/SP norm gradients,
embedding gradients, pipeline send/receive, distributed-optimizer all-gather) and the optimizer
step, from megatron-core's own timer hooks (``config.timers``). On a GPU these are CUDA events on
the compute stream, so overlapped communication counts only where it stalls compute; on the CPU
they are wall-clock times. "other" is the rest of the step (pipeline bubbles, zeroing gradients,
the loss reduction, Python). --json PATH writes every figure. Never fails on a timing.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch._dynamo.utils import counters

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.config.run import RunConfig
from megatron_qwen.model.builder import unwrap
from megatron_qwen.model.flops import peak_tflops, training_flops_per_token
from megatron_qwen.platform.distributed import compute_device, destroy_distributed, init_distributed, on_gpu
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.optimizer import adam_kernel
from megatron_qwen.training.step import train_step

# Megatron-LM on H100, bf16, seq 4096, vocabulary 131,072 (docs/qwen.md section 9): MFU by model size.
MEGATRON_LM_MFU = {"1.8b": 0.41, "7b": 0.47, "14b": 0.49}
# megatron-core's timer names (schedules, p2p_communication, finalize_model_grads, distrib_optimizer).
_COMPUTE = {"forward": ("forward-compute",), "backward": ("backward-compute",)}
_COMMUNICATION = ("all-grads-sync", "non-tensor-parallel-grads-all-reduce", "embedding-grads-all-reduce",
                  "conditional-embedder-grads-all-reduce", "params-all-gather", "forward-recv", "forward-send",
                  "backward-recv", "backward-send", "forward-send-backward-recv", "backward-send-forward-recv",
                  "forward-send-forward-recv", "backward-send-backward-recv",
                  "forward-backward-send-forward-backward-recv")
_OPTIMIZER = "optimizer-step"  # ours, around the optimizer's part of train_step; it contains params-all-gather
# Without any job flag: the tiny preset at a shape that runs in seconds on a CPU.
CPU_DEFAULT_FLAGS = ("--model-size", "tiny", "--seq-length", "256", "--micro-batch-size", "4")


class _Interval:
    """One named timer: every start/stop pair of a step, read after the step."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.pairs: list = []
        self._start = None

    def start(self, barrier: bool = False):  # megatron-core passes barrier=...; a barrier would distort the step
        self._start = torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()
        if self.cuda:
            self._start.record()

    def stop(self, barrier: bool = False):
        end = torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()
        if self.cuda:
            end.record()
        self.pairs.append((self._start, end))

    def seconds(self) -> float:
        if self.cuda:
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3
        return sum(e - s for s, e in self.pairs)


class StepTimers:
    """megatron-core's timer interface, ``timers(name, log_level=...).start()/.stop()``, collected per step."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._timers: dict[str, _Interval] = {}

    def __call__(self, name: str, log_level: int | None = None) -> _Interval:
        return self._timers.setdefault(name, _Interval(self.cuda))

    def collect(self) -> dict[str, float]:
        """Seconds per timer name since the last collect (call after the step has synchronized)."""
        out = {name: t.seconds() for name, t in self._timers.items()}
        self._timers = {}
        return out


def breakdown(raw: dict[str, float], step_s: float) -> dict[str, float]:
    """Forward, backward, communication, optimizer and the rest of one step, in seconds."""
    parts = {k: sum(raw.get(n, 0.0) for n in names) for k, names in _COMPUTE.items()}
    parts["communication"] = sum(raw.get(n, 0.0) for n in _COMMUNICATION)
    parts["optimizer"] = raw.get(_OPTIMIZER, 0.0) - raw.get("params-all-gather", 0.0)
    parts["other"] = max(0.0, step_s - sum(parts.values()))
    return parts


@dataclass
class Session:
    """A model, its optimizer and synthetic micro-batches, ready to step."""

    cfg: RunConfig
    model: list
    optimizer: object
    scheduler: object
    batches: list[dict]
    num_microbatches: int
    world_size: int
    device: torch.device
    timers: StepTimers
    build_s: float

    def step(self) -> tuple[float | None, float, dict[str, float]]:
        """One optimizer step: (loss, seconds, breakdown in seconds)."""
        t = self.cfg.train
        _synchronize()
        t0 = time.perf_counter()
        loss, _, _ = train_step(self.model, self.optimizer, self.scheduler, [iter(self.batches) for _ in self.model],
                                self.num_microbatches, t.seq_length, t.micro_batch_size, t.global_batch_size,
                                self.device)
        _synchronize()
        seconds = time.perf_counter() - t0
        return loss, seconds, breakdown(self.timers.collect(), seconds)


def _synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def synthetic_batches(cfg, num_microbatches: int, seed: int = 0) -> list[dict]:
    """Random tokens and labels, every token counted in the loss, causal attention (no mask tensor)."""
    t, vocab = cfg.train, cfg.model.vocab_size
    g = torch.Generator().manual_seed(seed)
    shape = (t.micro_batch_size, t.seq_length)
    return [{
        "tokens": torch.randint(0, vocab, shape, generator=g),
        "labels": torch.randint(0, vocab, shape, generator=g),
        "loss_mask": torch.ones(shape),
        "position_ids": torch.arange(t.seq_length).unsqueeze(0).expand(shape).contiguous(),
        "attention_mask": None,
    } for _ in range(num_microbatches)]


def job_flags(flags: list[str], steps: int, world_size: int) -> list[str]:
    """The training flags of a benchmark run: synthetic data, ``steps`` iterations, a constant LR of
    1e-4 (the schedule is irrelevant to speed), and one micro-batch per data-parallel rank; ``flags``
    come last, so they override any of these."""
    out = ["--mock-data", "--train-iters", str(steps), "--lr-warmup-iters", "0", "--lr-decay-style", "constant",
           "--lr", "1e-4", *flags]
    if "--global-batch-size" not in flags:
        cfg = parse_run_config(PRETRAIN, out)
        dp = cfg.parallel.data_parallel_size(world_size)
        out += ["--global-batch-size", str(cfg.train.micro_batch_size * dp)]
    return out


def build_session(flags: list[str], steps: int) -> Session:
    """Process groups, model, optimizer and data for ``flags`` (pretrain flags; with
    ``--use-cpu-initialization`` the CPU run's initial weights on a GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = parse_run_config(PRETRAIN, job_flags(flags, steps, world_size))
    cfg.validate(world_size)
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    device = compute_device()
    _synchronize()
    t0 = time.perf_counter()
    model, optimizer, scheduler = build_model_and_optimizer(cfg)
    _synchronize()
    build_s = time.perf_counter() - t0
    timers = StepTimers(on_gpu())
    unwrap(model[0]).config.timers = timers  # every chunk shares this TransformerConfig
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        opt.config.timers = timers
    _time_optimizer_step(optimizer, timers)
    num_mb = cfg.num_microbatches(world_size)
    return Session(cfg, model, optimizer, scheduler, synthetic_batches(cfg, num_mb), num_mb, world_size, device,
                   timers, build_s)


def _time_optimizer_step(optimizer, timers: StepTimers) -> None:
    """Time train_step's optimizer part: from preparing the gradients (the norm and its non-finite check
    are inside) to the end of the update (training/step.py: _step_unless_nonfinite)."""
    prepare, update = optimizer.prepare_grads, optimizer.step_with_ready_grads

    def timed_prepare(*args, **kwargs):
        timers(_OPTIMIZER).start()
        return prepare(*args, **kwargs)

    def timed_update(*args, **kwargs):
        out = update(*args, **kwargs)
        timers(_OPTIMIZER).stop()
        return out

    optimizer.prepare_grads, optimizer.step_with_ready_grads = timed_prepare, timed_update


def device_description() -> str:
    return torch.cuda.get_device_name() if on_gpu() else "cpu"


def measure(session: Session, warmup: int, iters: int, peak: float | None) -> dict:
    """Run the steps and return every figure (the same on every rank but the loss)."""
    cfg, t = session.cfg, session.cfg.train
    start = time.perf_counter()
    losses = [session.step()[0] for _ in range(warmup)]
    _synchronize()
    warmup_s = time.perf_counter() - start  # with --compile-layers, the compilation is in here
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()
    timed = [session.step() for _ in range(iters)]
    losses += [loss for loss, _, _ in timed]
    step_s = statistics.median(s for _, s, _ in timed)
    parts = {k: statistics.median(b[k] for _, _, b in timed) for k in timed[0][2]}
    tokens_per_gpu = t.global_batch_size * t.seq_length / session.world_size
    flops_per_token = training_flops_per_token(cfg.model, t.seq_length)
    tflops = tokens_per_gpu / step_s * flops_per_token / 1e12
    result = {
        "device": device_description(), "world_size": session.world_size, "model_size": cfg.model_size,
        "num_layers": cfg.model.num_layers, "hidden_size": cfg.model.hidden_size,
        "num_attention_heads": cfg.model.num_attention_heads, "ffn_hidden_size": cfg.model.ffn_hidden_size,
        "vocab_rows": cfg.model.padded_vocab_size, "seq_length": t.seq_length,
        "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size,
        "precision": cfg.build.precision, "transformer_impl": cfg.build.transformer_impl,
        "recompute": cfg.build.recompute_granularity or "none", "compile_layers": cfg.build.compile_layers,
        "tp": cfg.parallel.tensor_model_parallel_size, "pp": cfg.parallel.pipeline_model_parallel_size,
        "distributed_optimizer": cfg.zero.distributed_optimizer, "adam_kernel": adam_kernel(session.optimizer),
        "warmup": warmup, "iters": iters, "build_s": session.build_s, "warmup_s": warmup_s,
        "step_s": step_s, "step_s_all": [s for _, s, _ in timed], "breakdown_s": parts,
        "timer": "cuda events" if on_gpu() else "wall clock",
        "tokens_per_s_per_gpu": tokens_per_gpu / step_s, "gflop_per_token": flops_per_token / 1e9,
        "tflops_per_gpu": tflops, "peak_tflops": peak, "mfu": tflops / peak if peak else None,
        "losses": losses,
        # torch.compile's count over the whole run: the layer graph (one per grad mode) plus the fused
        # kernels compiled outside the layers; a graph break means part of a layer ran eagerly
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
    }
    if on_gpu():
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:  # the CPU has no allocator statistics; the process's peak resident set is the honest stand-in
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def report(r: dict) -> str:
    layout = f"TP{r['tp']} PP{r['pp']}, {r['world_size']} process(es)"
    lines = [
        f"model: {r['model_size']} ({r['num_layers']} layers, hidden {r['hidden_size']}, {r['num_attention_heads']} "
        f"heads, FFN {r['ffn_hidden_size']}, {r['vocab_rows']} vocabulary rows), seq {r['seq_length']}, "
        f"micro-batch {r['micro_batch_size']}, global batch {r['global_batch_size']}",
        f"run: {r['precision']}, back end {r['transformer_impl']}{', compiled layers' * r['compile_layers']}, "
        f"recompute {r['recompute']}, {layout}, "
        f"AdamW {r['adam_kernel']}, device {r['device']}",
        f"iterations: {r['warmup']} warm-up ({r['warmup_s']:.1f} s) + {r['iters']} timed; model built in "
        f"{r['build_s']:.1f} s",
        f"step time (median): {r['step_s'] * 1e3:.1f} ms",
        f"tokens/s/GPU: {r['tokens_per_s_per_gpu']:,.1f}",
        f"TFLOP/s/GPU: {r['tflops_per_gpu']:.3f} (model FLOPs, {r['gflop_per_token']:.3f} GFLOP/token)",
    ]
    if r["mfu"] is not None:
        lines.append(f"MFU: {r['mfu'] * 100:.1f}% of {r['peak_tflops']:g} TFLOP/s dense bf16 peak")
        published = MEGATRON_LM_MFU.get(r["model_size"].lower())
        if published:
            lines.append(f"ratio to Megatron-LM's published {published:.0%} MFU (seq 4096, vocab 131k, "
                         f"not like for like): {r['mfu'] / published:.2f}")
    else:
        lines.append("MFU: n/a (no dense bf16 peak known for this device; --peak-tflops sets one)")
    if "peak_memory_gib" in r:
        lines.append(f"peak memory: {r['peak_memory_gib']:.2f} GiB allocated, {r['peak_reserved_gib']:.2f} GiB "
                     "reserved")
    else:
        lines.append(f"peak memory: {r['peak_rss_gib']:.2f} GiB process peak RSS (CPU)")
    lines.append(f"torch.compile: {r['compiled_graphs']} graphs, {r['graph_breaks']} graph breaks")
    parts = " | ".join(f"{k} {v * 1e3:.1f}" for k, v in r["breakdown_s"].items())
    lines.append(f"step breakdown (median ms, {r['timer']}): {parts}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=int, default=3, help="steps run first and not timed")
    ap.add_argument("--iters", type=int, default=10, help="timed steps")
    ap.add_argument("--nproc", type=int, default=1, help="processes on this machine (re-launches under torchrun)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of the device for MFU (default: model/flops.py's table by GPU name)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    return ap.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, flags = parse_args(argv)
    flags = flags or list(CPU_DEFAULT_FLAGS)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        own = ["--warmup", str(args.warmup), "--iters", str(args.iters)]
        own += (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []) + (
            ["--json", args.json] if args.json else [])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               os.path.abspath(__file__), *own, *flags]
        return subprocess.run(cmd).returncode
    try:
        session = build_session(flags, args.warmup + args.iters)
    except ConfigError as e:  # a flag that cannot run: one line, as the training entry points say it
        print(f"error: {e}", file=sys.stderr)
        return 2
    peak = args.peak_tflops or (peak_tflops(device_description()) if on_gpu() else None)
    result = measure(session, args.warmup, args.iters, peak)
    if torch.distributed.get_rank() == 0:
        print(report(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
