"""Training throughput of a pretraining layout on synthetic data, against the published figures.

    python bench/bench_train.py                                    # CPU: tiny model, 2 processes, TP2
    python bench/bench_train.py --nproc 8 --model-size 7b --seq-length 4096 --bf16 \
        --tensor-model-parallel-size 2 --micro-batch-size 1 --global-batch-size 64   # one H100 node

Runs `torchrun -m megatron_qwen.pretrain --mock-data` for --iters iterations, drops the first
--warmup ones (compilation, allocator growth), and prints the median tokens/s per GPU, TFLOP/s per
GPU and MFU (model FLOPs: megatron_qwen/model/flops.py) with their ratio to Megatron-LM's
published H100 MFU (docs/qwen.md section 9). Never fails on a timing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Megatron-LM on H100, bf16, seq 4096 (docs/qwen.md section 9): MFU by model size.
MEGATRON_LM_MFU = {"1.8b": 0.41, "7b": 0.47, "14b": 0.49}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--model-size", default="tiny")
    args, job_flags = ap.parse_known_args()
    if not job_flags:
        job_flags = ["--tensor-model-parallel-size", "2", "--seq-length", "256", "--micro-batch-size", "4",
                     "--global-batch-size", "8"]
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               "-m", "megatron_qwen.pretrain", "--mock-data", "--model-size", args.model_size,
               "--train-iters", str(args.iters), "--lr-warmup-iters", "1", "--eval-interval", "1000000",
               "--log-interval", str(args.iters), "--metrics-file", metrics, *job_flags]
        print("$ " + " ".join(cmd), flush=True)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print(f"bench_train: the training job failed (exit code {proc.returncode})", file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in open(metrics)]
    steady = [r for r in rows if r["iteration"] > args.warmup]
    if not steady:
        print(f"bench_train: no iteration after the {args.warmup} warm-up ones; raise --iters", file=sys.stderr)
        return 1
    tps = statistics.median(r["tokens_per_sec_per_gpu"] for r in steady)
    tflops = statistics.median(r["tflops_per_gpu"] for r in steady)
    mfus = [r["mfu"] for r in steady if r["mfu"] is not None]
    print(f"iterations measured: {len(steady)} (after {args.warmup} warm-up)")
    print(f"tokens/s per GPU (median): {tps:,.1f}")
    print(f"model TFLOP/s per GPU (median): {tflops:.3f}")
    if mfus:
        mfu = statistics.median(mfus)
        print(f"MFU (median): {mfu * 100:.1f}%")
        published = MEGATRON_LM_MFU.get(args.model_size.lower())
        if published:
            print(f"ratio to Megatron-LM's published {published * 100:.0f}% MFU: {mfu / published:.2f}")
    else:
        print("MFU: n/a (no known peak for this device; CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
