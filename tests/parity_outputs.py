"""The parity worker (tests/parity/parity_worker.py) and its outputs: every rank saves its slices of the
weights and gradients, merged back here into full tensors (tests/test_parity.py, tests/test_hf_parity.py)."""

import os

import torch
from conftest import REPO

from megatron_qwen.model.layout import unshard

WORKER = os.path.join(REPO, "tests", "parity", "parity_worker.py")


def merge(out_dir: str, kind: str) -> dict[str, torch.Tensor]:
    """Full tensors by global name from every rank's slices."""
    slices: dict[str, dict[int, torch.Tensor]] = {}
    dims = {}
    for f in sorted(os.listdir(out_dir)):
        if f.startswith(kind + "_rank"):
            for name, (tp_rank, dim, t) in torch.load(os.path.join(out_dir, f)).items():
                slices.setdefault(name, {})[tp_rank] = t
                dims[name] = dim
    return {n: unshard([s[r] for r in sorted(s)], n, dims[n]) for n, s in slices.items()}


def assert_gradients_match(ref_dir, got_dir, label: str, kind: str = "grads") -> None:
    """The gradients ``kind`` under ``got_dir`` equal the reference's first-step gradients, each tensor within
    1e-5 of its scale (tests/test_parity.py's tolerance)."""
    g_ref, g = merge(ref_dir, "grads"), merge(got_dir, kind)
    assert g.keys() == g_ref.keys(), label
    for name in g_ref:
        err = (g[name] - g_ref[name]).abs().max().item()
        assert err <= 1e-5 * max(g_ref[name].abs().max().item(), 1e-3), f"{label}: {kind} of {name} off by {err}"


def run_layouts(worker: str, layouts: dict, root) -> None:
    """``worker`` (a tests/parity/ script taking --layouts and --out) alone for the single-process reference "ref",
    then under torchrun on 2 processes for ``layouts``, writing under ``root``."""
    import json
    import subprocess
    import sys

    from conftest import quiet_env, torchrun

    proc = subprocess.run([sys.executable, worker, "--layouts", json.dumps({"ref": []}), "--out", str(root)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    torchrun(2, [worker, "--layouts", json.dumps(layouts), "--out", str(root)])

