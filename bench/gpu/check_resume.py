"""Checkpoint stage of bench/gpu_check.sh: the distributed optimizer resumes on this GPU, and what checksums cost.

    python bench/gpu/check_resume.py OUT.json [--quick]

1. The tiny model in bf16 with --use-distributed-optimizer through the pretrain entry point on one GPU (with
   transformer-engine or apex where installed: their FusedAdam keeps no per-parameter step, unlike torch's
   AdamW on the CPU, docs/checkpoints.md): 4 steps uninterrupted, then 2 steps saved and 2 resumed. The
   resumed losses must equal the uninterrupted run's (1e-6 relative: the same kernels on the same data).
2. bench/bench_checkpoint_checksums.py on this machine's disk (4 GiB; --quick: 0.25 GiB): the save with and
   without checksums, and the verification a --load does.

Exit status 1 when the resume check fails.
"""

import json
import os
import subprocess
import sys
import tempfile

TINY = ["--model-size", "tiny", "--mock-data", "--seq-length", "128", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "1", "--lr-decay-iters", "8", "--seed", "5",
        "--eval-interval", "1000", "--bf16", "--use-distributed-optimizer", "--train-iters", "4"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(flags: list[str], workdir: str, name: str) -> dict[int, float]:
    metrics = os.path.join(workdir, f"{name}.jsonl")
    proc = subprocess.run([sys.executable, "-m", "megatron_qwen.pretrain", *TINY, *flags, "--metrics-file", metrics],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(metrics)]
    return {r["iteration"]: r["lm_loss"] for r in rows if "lm_loss" in r}


def main() -> int:
    out, quick = sys.argv[1], "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as work:
        ckpt = os.path.join(work, "ckpt")
        reference = losses([], work, "reference")
        losses(["--save", ckpt, "--exit-interval", "2"], work, "first")
        resumed = losses(["--load", ckpt], work, "resumed")
        bench = os.path.join(work, "checksums.json")
        subprocess.run([sys.executable, "bench/bench_checkpoint_checksums.py", "--size-gib", "0.25" if quick else "4",
                        "--workdir", work, "--json", bench], cwd=REPO, check=True, timeout=900)
        checksums = json.load(open(bench))
    worst = max(abs(resumed[it] - reference[it]) / abs(reference[it]) for it in (3, 4))
    result = {"reference": reference, "resumed": resumed, "worst_relative": worst, "resume_ok": worst <= 1e-6,
              "checksums": checksums}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"distributed optimizer resume: losses 3-4 within {worst:.1e} of the uninterrupted run's "
          f"({'ok' if result['resume_ok'] else 'FAILED'})", flush=True)
    return 0 if result["resume_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
