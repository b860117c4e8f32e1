"""Checkpoint conversion, with peak memory: tools/convert_checkpoint.py run as its own process.

    python bench/bench_convert.py                   # Qwen-1.8B's shape: 24 layers, 1.84B parameters, bf16
    python bench/bench_convert.py --num-layers 2    # the same widths and vocabulary, fewer layers (quick)

Writes a random checkpoint of Qwen-1.8B's shape in the published layout (QWenLMHeadModel names, bf16,
safetensors in 2 GB shards like Qwen's own files) under --workdir, then runs, each as a fresh process and
each --rounds times:
  import  tools/convert_checkpoint.py --load-dir HF --save-dir OURS                      (Hugging Face -> ours)
  export  tools/convert_checkpoint.py --load-dir OURS --save-dir BACK --hf-layout qwen   (ours -> Hugging Face)
  export  tools/convert_checkpoint.py --load-dir OURS --save-dir VIA --hf-layout qwen2   (ours -> qwen2)
  direct  tools/convert_checkpoint.py --load-dir HF --save-dir DIRECT --hf-layout qwen2  (qwen -> qwen2 directly)
and checks that every tensor of BACK equals HF's bit for bit and that DIRECT equals VIA file for file (the way
through ours: import, then export). For each conversion it prints the best wall time of the rounds, the
converting process's peak resident memory (as the tool reports it), the largest peak of any process in its
tree (megatron-core forks writer processes while saving; their memory is mostly shared with the parent,
copy-on-write), and the size of the checkpoint read and written; then qwen -> qwen2 both ways side by side
(the way through ours: import + export, its time the sum, its peak the larger). Timings on a shared machine
say as much about the neighbours as about the code; the memory figures do not depend on them.
"""

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from safetensors import safe_open

from megatron_qwen.config.model import model_preset
from megatron_qwen.hf.random_model import write_random_hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
GIB = 2**30


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run_tool(args: list[str], log: str) -> dict:
    """Run the tool as a child process: its wall time, its own peak RSS (as it reports it) and the
    largest peak RSS of any process in its tree (the kernel's rusage of that child, via wait4)."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, TOOL, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"))
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    wall = time.monotonic() - start
    text = open(log).read()
    if proc.returncode != 0:
        sys.exit(f"conversion failed: {' '.join(args)}\n{text[-3000:]}")
    summary = text.strip().splitlines()[-1]
    own = float(re.search(r"peak RSS ([0-9.]+) GiB", summary).group(1))
    return {"wall": wall, "own": own, "tree": usage.ru_maxrss / 2**20, "summary": summary}  # ru_maxrss: KiB


def same_tensors(a: str, b: str) -> bool:
    """Every tensor of the safetensors files in ``a`` equals the one of the same name in ``b``."""

    def index(d):
        out = {}
        for file in os.listdir(d):
            if file.endswith(".safetensors"):
                with safe_open(os.path.join(d, file), "pt") as f:
                    out.update({k: os.path.join(d, file) for k in f.keys()})
        return out

    ia, ib = index(a), index(b)
    if ia.keys() != ib.keys():
        return False
    for name in ia:
        with safe_open(ia[name], "pt") as fa, safe_open(ib[name], "pt") as fb:
            if not torch.equal(fa.get_tensor(name), fb.get_tensor(name)):
                return False
    return True


def same_directories(a: str, b: str) -> bool:
    """The same files with the same bytes."""
    names = sorted(os.listdir(a))
    return names == sorted(os.listdir(b)) and filecmp.cmpfiles(a, b, names, shallow=False)[0] == names


def best_runs(conversions: dict, work: str, rounds: int) -> dict:
    """{name: (best wall, largest own peak, largest tree peak)} over ``rounds`` runs of each conversion
    (name -> (tool arguments, output directory)); the outputs of the last round are kept."""
    best = {}
    for r in range(rounds):
        for name, (args, out) in conversions.items():
            shutil.rmtree(out, ignore_errors=True)
            res = run_tool(args, os.path.join(work, f"{name.split()[0]}.log"))
            print(f"  round {r + 1}, {name}: {res['summary']}", flush=True)
            wall, own, tree = best.get(name, (float("inf"), 0.0, 0.0))
            best[name] = (min(wall, res["wall"]), max(own, res["own"]), max(tree, res["tree"]))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-layers", type=int, default=24, help="layers of the 1.8B shape (24: the real one)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each conversion; the best time is reported")
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="bench_convert.")
    hf, ours, back, via, direct = (os.path.join(work, n) for n in ("hf", "ours", "back", "via", "direct"))
    conversions = {  # in order: each export reads the import's output
        "import (HF -> ours)": (["--load-dir", hf, "--save-dir", ours], ours),
        "export (ours -> qwen)": (["--load-dir", ours, "--save-dir", back, "--hf-layout", "qwen"], back),
        "export (ours -> qwen2)": (["--load-dir", ours, "--save-dir", via, "--hf-layout", "qwen2"], via),
        "direct (qwen -> qwen2)": (["--load-dir", hf, "--save-dir", direct, "--hf-layout", "qwen2"], direct),
    }
    try:
        start = time.monotonic()
        params = write_random_hf(hf, model_preset("1.8b").with_overrides(num_layers=a.num_layers), "qwen",
                                 torch.bfloat16, max_shard_size=2 * 10**9)
        print(f"random Qwen-1.8B-shaped checkpoint, {a.num_layers} layers: {params / 1e9:.3f}B parameters, "
              f"bf16, {du(hf) / GIB:.2f} GiB ({time.monotonic() - start:.0f} s to write)", flush=True)
        best = best_runs(conversions, work, a.rounds)
        print(f"round trip bit for bit: {'yes' if same_tensors(hf, back) else 'NO'}")
        print(f"direct equals import then export, file for file: {'yes' if same_directories(direct, via) else 'NO'}")
        print(f"\nbest of {a.rounds}\n{'conversion':<24}{'wall s':>8}{'peak RSS GiB':>14}{'tree peak GiB':>15}"
              f"{'read GiB':>10}{'written GiB':>13}")
        for name, (args, out) in conversions.items():
            wall, own, tree = best[name]
            print(f"{name:<24}{wall:>8.0f}{own:>14.2f}{tree:>15.2f}{du(args[1]) / GIB:>10.2f}{du(out) / GIB:>13.2f}")
        (iw, io, it), (ew, eo, et) = best["import (HF -> ours)"], best["export (ours -> qwen2)"]
        dw, do, dt = best["direct (qwen -> qwen2)"]
        print(f"\nqwen -> qwen2: through ours (import + export) {iw + ew:.0f} s, peak RSS {max(io, eo):.2f} GiB "
              f"(tree {max(it, et):.2f}); directly {dw:.0f} s, peak RSS {do:.2f} GiB (tree {dt:.2f})")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
