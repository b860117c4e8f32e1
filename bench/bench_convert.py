"""Checkpoint conversion both ways, with peak memory: tools/convert_checkpoint.py run as its own process.

    python bench/bench_convert.py                   # Qwen-1.8B's shape: 24 layers, 1.84B parameters, bf16
    python bench/bench_convert.py --num-layers 2    # the same widths and vocabulary, fewer layers (quick)

Writes a random checkpoint of Qwen-1.8B's shape in the published layout (QWenLMHeadModel names, bf16,
safetensors in 2 GB shards like Qwen's own files) under --workdir, then runs, each as a fresh process:
  import  tools/convert_checkpoint.py --load-dir HF --save-dir OURS                    (Hugging Face -> ours)
  export  tools/convert_checkpoint.py --load-dir OURS --save-dir BACK --hf-layout qwen (ours -> Hugging Face)
and checks that every tensor of BACK equals HF's bit for bit. For each direction it prints the wall time,
the converting process's peak resident memory (as the tool reports it), the largest peak of any process
in its tree (megatron-core forks writer processes while saving; their memory is mostly shared with the
parent, copy-on-write), and the size of the checkpoint read and written. Timings on a shared machine
say as much about the neighbours as about the code; the memory figures do not depend on them.
"""

import argparse
import json
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
from megatron_qwen.hf.files import SafetensorsWriter
from megatron_qwen.hf.layouts import hf_config, hf_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
GIB = 2**30


def write_random_hf(directory: str, num_layers: int) -> int:
    """A random Qwen-1.8B-shaped Qwen-1 checkpoint, written one tensor at a time; returns its parameters."""
    cfg = model_preset("1.8b").with_overrides(num_layers=num_layers)
    os.makedirs(directory)
    shapes = hf_shapes(cfg, "qwen")
    writer = SafetensorsWriter(directory, [(n, s, torch.bfloat16) for n, s in shapes.items()], 2 * 10**9)
    g = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=g)
        writer.write(name, t + 1 if ".ln_" in name else t)  # RMSNorm weights around 1
    writer.close()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(cfg, "qwen", torch.bfloat16, cfg.seq_length), f, indent=2)
    return sum(torch.Size(s).numel() for s in shapes.values())


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-layers", type=int, default=24, help="layers of the 1.8B shape (24: the real one)")
    ap.add_argument("--workdir", default=None, help="where to write the three checkpoints (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="bench_convert.")
    hf, ours, back = (os.path.join(work, n) for n in ("hf", "ours", "back"))
    try:
        start = time.monotonic()
        params = write_random_hf(hf, a.num_layers)
        print(f"random Qwen-1.8B-shaped checkpoint, {a.num_layers} layers: {params / 1e9:.3f}B parameters, "
              f"bf16, {du(hf) / GIB:.2f} GiB ({time.monotonic() - start:.0f} s to write)", flush=True)
        rows = []
        for name, args, read, written in (("import (HF -> ours)", ["--load-dir", hf, "--save-dir", ours], hf, ours),
                                          ("export (ours -> HF)", ["--load-dir", ours, "--save-dir", back,
                                                                   "--hf-layout", "qwen"], ours, back)):
            r = run_tool(args, os.path.join(work, f"{name.split()[0]}.log"))
            rows.append((name, r["wall"], r["own"], r["tree"], du(read) / GIB, du(written) / GIB))
            print(f"  {r['summary']}", flush=True)
        print(f"round trip bit for bit: {'yes' if same_tensors(hf, back) else 'NO'}")
        print(f"\n{'direction':<22}{'wall s':>8}{'peak RSS GiB':>14}{'tree peak GiB':>15}{'read GiB':>10}"
              f"{'written GiB':>13}")
        for name, wall, own, tree, rd, wr in rows:
            print(f"{name:<22}{wall:>8.0f}{own:>14.2f}{tree:>15.2f}{rd:>10.2f}{wr:>13.2f}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
