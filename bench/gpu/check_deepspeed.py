"""DeepSpeed stage of bench/gpu_check.sh: the deepspeed engine on this GPU with DeepSpeed's FusedAdam.

    python bench/gpu/check_deepspeed.py OUT.json [--quick]

1. DeepSpeed's FusedAdam (a CUDA extension built on first use; the deepspeed engine's optimizer on a GPU,
   training/deepspeed_optimizer.py): the build's time, and its step on 100M fp32 parameters against torch's
   AdamW, fused and foreach (bench/bench_deepspeed_adam.py --device cuda).
2. The tiny model, fp32, sdpa, 5 steps through the pretrain entry point on one GPU: ZeRO-2 with the engine's own
   choice (FusedAdam, or torch's AdamW after a failed build, said in the log), ZeRO-2 with --use-torch-adamw,
   and the megatron engine. Tolerances: FusedAdam against torch's AdamW, losses 1e-5 relative (the same fp32
   update in another order, as check_correctness.py's fused AdamW check); the deepspeed engine against the
   megatron engine, 1e-4 (the parity suite's bound for 5-step curves; device reductions in other orders).

--quick (the CPU dry run): 2 steps, 1M parameters, nothing built (on the CPU the engine picks torch's AdamW;
DeepSpeed's CPU Adam takes minutes to build): every part still runs. Exit status 1 when a check fails.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from bench_deepspeed_adam import describe, measure

TOL_FUSED_VS_TORCH, TOL_VS_MEGATRON = 1e-5, 1e-4
TINY = ["--model-size", "tiny", "--mock-data", "--seq-length", "128", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "1", "--seed", "5", "--eval-interval",
        "1000", "--hidden-dropout", "0", "--attention-dropout", "0", "--transformer-impl", "sdpa"]
RUNS = {"deepspeed ZeRO-2, its optimizer": ["--zero-engine", "deepspeed", "--zero-stage", "2"],
        "deepspeed ZeRO-2, torch AdamW": ["--zero-engine", "deepspeed", "--zero-stage", "2", "--use-torch-adamw"],
        "megatron": ["--zero-engine", "megatron"]}


def train(flags: list[str], steps: int, workdir: str) -> dict:
    """Losses by iteration of one pretrain run, and the optimizer the engine said it picked."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "megatron_qwen.pretrain", *TINY, "--train-iters", str(steps), "--metrics-file", metrics, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(flags)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    said = [line.split("; optimizer: ")[-1] for line in proc.stdout.splitlines() if "; optimizer: " in line]
    with open(metrics) as f:
        losses = [r["lm_loss"] for r in map(json.loads, f) if "lm_loss" in r]
    return {"losses": losses, "optimizer": said[0] if said else None}


def main() -> int:
    out, quick = sys.argv[1], "--quick" in sys.argv
    gpu = torch.cuda.is_available() and not quick
    adam = measure(100_000_000 if gpu else 1_000_000, 5 if gpu else 2, "cuda" if gpu else "cpu", build=gpu)
    print("\n".join(describe(adam)))
    with tempfile.TemporaryDirectory() as work:
        runs = {name: train(flags, 2 if quick else 5, work) for name, flags in RUNS.items()}
    own, torch_adamw, megatron = (runs[name] for name in RUNS)
    checks = []
    for name, got, ref, tol in (("DeepSpeed's optimizer vs torch AdamW", own, torch_adamw, TOL_FUSED_VS_TORCH),
                                ("deepspeed engine vs megatron engine", torch_adamw, megatron, TOL_VS_MEGATRON)):
        worst = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], ref["losses"]))
        checks.append({"name": name, "metric": "max rel loss difference", "value": worst, "tolerance": tol,
                       "pass": worst <= tol and len(got["losses"]) == len(ref["losses"])})
        print(f"{name}: {worst:.2e} (tolerance {tol:g}) {'pass' if checks[-1]['pass'] else 'FAIL'}")
    print(f"the deepspeed engine picked: {own['optimizer']}")
    with open(out, "w") as f:
        json.dump({"adam": adam, "runs": runs, "checks": checks}, f, indent=1)
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
