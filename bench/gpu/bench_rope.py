"""What RoPE costs per layer on the local back ends, and what compiling it would save (to measure).

    python bench/gpu/bench_rope.py OUT.json            # on a GPU: 1.8B shape, 20 timed repetitions
    python bench/gpu/bench_rope.py OUT.json --quick    # the CPU dry run: a small shape, no torch.compile

Forward plus backward of rotating one layer's query and key, [seq 2048, micro-batch 2, 16 heads, 128]
in bf16 (Qwen-1.8B at seq 2048), three ways: megatron-core's unfused rotation in bf16 (the stock
local spec), the same in fp32 with casts around it (this project's spec, model/rope.py), and that
fp32 version under torch.compile (one fused kernel; not wired into the model: a candidate whose
gain this measures). CUDA events on a GPU. torch.compile is skipped on the CPU, where it takes over
a minute to compile. Never fails on a timing.
"""

import json
import sys

import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from timing import median_ms

from megatron_qwen.platform import cpu_shim


def stock(t, freqs):
    return _apply_rotary_pos_emb_bshd(t, freqs)


def fp32(t, freqs):
    return _apply_rotary_pos_emb_bshd(t.float(), freqs).to(t.dtype)


def time_fwd_bwd(fn, q, k, freqs, reps: int, warmup: int) -> float:
    """Median milliseconds of rotating q and k and back-propagating through both."""
    def step():
        (fn(q, freqs).float().sum() + fn(k, freqs).float().sum()).backward()

    return median_ms(step, reps, warmup, q.is_cuda)[0]


def main() -> int:
    out_path, quick = sys.argv[1], "--quick" in sys.argv
    cuda = torch.cuda.is_available()
    cpu_shim.install_if_needed()  # RotaryEmbedding allocates on the CUDA device
    device = torch.device("cuda") if cuda else torch.device("cpu")
    seq, mbs, heads, dim = (128, 1, 4, 64) if quick else (2048, 2, 16, 128)
    reps, warmup = (1, 1) if quick else (20, 5)
    freqs = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=10000)(seq).to(device)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(seq, mbs, heads, dim, generator=g).bfloat16().to(device).requires_grad_() for _ in range(2))
    variants = {"bf16 rotation (megatron-core)": stock, "fp32 rotation (ours)": fp32}
    if cuda:
        variants["fp32 rotation, torch.compile"] = torch.compile(fp32)
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "shape": [seq, mbs, heads, dim],
              "reps": reps, "ms_per_layer_fwd_bwd": {}}
    for name, fn in variants.items():
        result["ms_per_layer_fwd_bwd"][name] = time_fwd_bwd(fn, q, k, freqs, reps, warmup)
    if cuda:  # the compiled kernel must compute what the eager one does
        eager, compiled = fp32(q, freqs), variants["fp32 rotation, torch.compile"](q, freqs)
        result["compiled_vs_eager_max_abs"] = (eager.float() - compiled.float()).abs().max().item()
    else:
        result["note"] = "torch.compile not measured on the CPU"
    for name, ms in result["ms_per_layer_fwd_bwd"].items():
        print(f"{name}: {ms:.3f} ms per layer (q and k, forward + backward, {result['shape']})", flush=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
