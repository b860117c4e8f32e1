"""The Code-Qwen layout against one GPU (bench/gpu_check.sh's Code-Qwen stage; four GPUs and transformer-engine).

    python bench/gpu/check_code_qwen_layout.py OUT.json

LAYOUT is examples/pretrain_code/qwen_7b.sh's (TP2 x CP2 with sequence parallelism) with the flags
examples/launch.sh adds to every job (bf16, the distributed optimizer, overlapped gradient reduce and parameter
gather); tests/test_gpu_checks.py keeps it so. The tiny preset on synthetic data at sequence 256, transformer-engine,
initial weights drawn on the CPU, through the Code-Qwen entry point: 4 iterations on one GPU (TP1 x CP1, the
reference), and at the layout 2 iterations that save (iteration 2's checkpoint, written under context parallelism
after a parameter sync) and a second run that resumes them to 4 (--load). Checked: the runs stop at 2 and resume
at 3, and each iteration's loss is the reference's within 2e-3 relative: both runs are bf16 and differ only in the
order of their sums (tensor-parallel reductions, context parallelism's attention in chunks; the distributed
optimizer shards over the two context-parallel ranks), which moves a loss far less than bf16's unit roundoff
(2^-9 = 2e-3); check_correctness.py holds bf16 against fp32 to the same bound, where the CPU measures 3.5e-4.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from check_correctness import check, print_checks

TOLERANCE = 2e-3
LAYOUT = ["--tensor-model-parallel-size", "2", "--context-parallel-size", "2", "--sequence-parallel",
          "--bf16", "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather"]
TINY = ["--model-size", "tiny", "--mock-data", "--seq-length", "256", "--micro-batch-size", "1",
        "--global-batch-size", "4", "--train-iters", "4", "--lr", "1e-3", "--lr-warmup-iters", "1", "--seed", "5",
        "--no-finetune", "--eval-interval", "1000", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--transformer-impl", "transformer_engine", "--use-cpu-initialization"]


def losses(nproc: int, flags: list[str], workdir: str, name: str) -> dict[int, float]:
    """Loss by iteration of one run of the Code-Qwen entry point on ``nproc`` GPUs."""
    metrics = os.path.join(workdir, f"{name}.jsonl")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1
                else [sys.executable])
    cmd = [*launcher, "-m", "megatron_qwen.pretrain_code", *TINY, *flags, "--metrics-file", metrics]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(metrics) as f:
        rows = [json.loads(line) for line in f]
    return {r["iteration"]: r["lm_loss"] for r in rows if "lm_loss" in r}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ref = losses(1, ["--bf16"], tmp, "reference")
        save = os.path.join(tmp, "ckpt")
        first = losses(4, [*LAYOUT, "--save", save, "--exit-interval", "2"], tmp, "first")
        resumed = losses(4, [*LAYOUT, "--load", save, "--save", save], tmp, "resumed")
    got = {**first, **resumed}
    checks = [check(f"TP2 x CP2 + SP vs TP1 x CP1, iteration {it}" + (" (resumed)" if it in resumed else ""),
                    abs(got[it] - ref[it]) / abs(ref[it]), TOLERANCE, "relative") for it in sorted(ref) if it in got]
    # the first run stops at 2 and saves, the second resumes at 3 (not from scratch)
    checks.append(check("iterations 1-2, saved, then 3-4 resumed: iterations missing or run twice",
                        len(set(first) ^ {1, 2}) + len(set(resumed) ^ {3, 4}), 0, "count"))
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "layout": LAYOUT,
                   "reference": ref, "layout_losses": got, "checks": checks}, f, indent=1)
    return print_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
