"""Step time and per-rank memory of the data-parallel engines on the same model and batch.

    python bench/bench_zero.py                       # tiny-qwen-vocab (39.7M parameters), DP2 on CPU
    python bench/bench_zero.py --nproc 8 --model-size 1.8b --seq-length 2048 --iters 20   # a GPU node

Runs the pretrain job once per engine (megatron ZeRO-1 = --use-distributed-optimizer, DeepSpeed
ZeRO-1/2/3, ZeRO-2 and ZeRO-3 with CPU offload) through torchrun and reports the median step time of
the iterations after the first (from --metrics-file) and the largest rank's peak resident memory
(ru_maxrss of the run's processes; on CPU, model, gradients, optimizer state and activations all live
there, so sharding shows up directly). Never fails on a timing.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = {
    "megatron ZeRO-1": ["--use-distributed-optimizer"],
    "deepspeed ZeRO-1": ["--zero-engine", "deepspeed", "--zero-stage", "1"],
    "deepspeed ZeRO-2": ["--zero-engine", "deepspeed", "--zero-stage", "2"],
    "deepspeed ZeRO-3": ["--zero-engine", "deepspeed", "--zero-stage", "3"],
    "deepspeed ZeRO-2 + offload optimizer": ["--zero-engine", "deepspeed", "--zero-stage", "2",
                                             "--zero-offload-optimizer", "cpu"],
    "deepspeed ZeRO-3 + offload optimizer, params": ["--zero-engine", "deepspeed", "--zero-stage", "3",
                                                     "--zero-offload-optimizer", "cpu", "--zero-offload-param", "cpu"],
}


def run_one(flags: list[str], args, workdir: str) -> dict:
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(_free_port()), "-m", "megatron_qwen.pretrain", "--mock-data",
           "--model-size", args.model_size, "--seq-length", str(args.seq_length),
           "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(args.global_batch_size),
           "--train-iters", str(args.iters), "--lr", "1e-4", "--lr-warmup-iters", "1", "--log-interval", "1000",
           "--metrics-file", metrics, *flags]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    # A parent of its own per run, so that its children's peak RSS is this run's largest rank.
    measured = [sys.executable, "-c", "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
                "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)", *cmd]
    start = time.monotonic()
    proc = subprocess.run(measured, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        return {"error": next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])[:200]}
    rows = [json.loads(line) for line in open(metrics) if '"lm_loss"' in line]
    times = [r["elapsed_ms"] / 1e3 for r in rows[1:]]
    peak_kib = int(next(ln for ln in proc.stdout.splitlines() if ln.startswith("peak_rss_kib")).split()[1])
    return {"step_s": statistics.median(times) if times else None, "peak_rss_gib": peak_kib / 2**20, "wall_s": wall,
            "final_loss": rows[-1]["lm_loss"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-size", default="tiny-qwen-vocab")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--global-batch-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    ap.add_argument("--only", nargs="*", default=None, help="engine names to run (default: all)")
    args = ap.parse_args(argv)
    print(f"{args.model_size}, {args.nproc} ranks (DP{args.nproc}), seq {args.seq_length}, micro-batch "
          f"{args.micro_batch_size}, global batch {args.global_batch_size}, {args.iters} iterations", flush=True)
    print(f"{'engine':<46} {'step (s)':>9} {'peak RSS/rank (GiB)':>20} {'final loss':>11}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for i, (name, flags) in enumerate(ENGINES.items()):
            if args.only and name not in args.only:
                continue
            r = run_one(flags, args, workdir)
            if "error" in r:
                print(f"{name:<46} failed: {r['error']}", flush=True)
                continue
            rss = f"{r['peak_rss_gib']:.2f}"
            step = f"{r['step_s']:.3f}" if r["step_s"] else "n/a"
            print(f"{name:<46} {step:>9} {rss:>20} {r['final_loss']:>11.4f}  ({i + 1}/{len(ENGINES)}, "
                  f"{r['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
