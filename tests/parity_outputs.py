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
