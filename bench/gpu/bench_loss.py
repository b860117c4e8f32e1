"""What the loss over Qwen's 151,936-row vocabulary costs: the chunked loss (model/loss.py, the default)
against megatron-core's vocab-parallel cross entropy (``--no-cross-entropy-fusion``).

    python bench/gpu/bench_loss.py OUT.json            # on a GPU: 1.8B's micro-batches 4 and 8 at seq 2048
    python bench/gpu/bench_loss.py OUT.json --cpu      # the CPU's eager path: 512 tokens, fp32 and bf16
    python bench/gpu/bench_loss.py OUT.json --quick    # the CPU dry run: 256 tokens, one repetition

Forward plus backward from bf16 logits (and fp32 ones with --cpu) [seq, micro-batch, vocab], what the
output layer hands the loss, to their gradient: median milliseconds (CUDA events on a GPU) and the memory
the loss adds at its peak above the logits (torch.cuda.max_memory_allocated; not measured on the CPU).
Both are also checked against torch's cross entropy in fp64 (loss and logits gradient, on the first
sequence), so a fast wrong kernel cannot pass unnoticed. Never fails on a timing.
"""

import functools
import itertools
import json
import sys

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_loss
from timing import median_ms

from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.model.loss import vocab_parallel_cross_entropy
from megatron_qwen.platform.distributed import init_distributed

VOCAB = 151_936


def run(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of ``logits`` and, after a backward pass from its sum, their gradient."""
    x = logits.clone().requires_grad_()
    loss = loss_fn(x * 1, target)  # x * 1: a non-leaf, as the output layer's logits are
    loss.sum().backward()
    return loss.detach(), x.grad


def errors(loss_fn, logits, target) -> dict:
    """Against torch's cross entropy on the same logits in fp64: the loss, and the gradient's rel L2. (Not
    fp32: the reference's own rounding would be ten times ours, 1.7e-6 against 6e-8 on the loss.)"""
    x = logits.to(torch.float64, copy=True).requires_grad_()
    reference = F.cross_entropy(x.view(-1, x.size(-1)), target.reshape(-1), reduction="none")
    reference.sum().backward()
    loss, grad = run(loss_fn, logits, target)
    return {"loss rel max": ((loss.reshape(-1) - reference).abs().max() / reference.abs().max()).item(),
            "gradient rel L2": ((grad.double() - x.grad).norm() / x.grad.norm()).item()}


def main() -> int:
    out_path, quick, cpu = sys.argv[1], "--quick" in sys.argv, "--cpu" in sys.argv
    cuda = torch.cuda.is_available() and not cpu
    init_distributed(ParallelSettings(), num_layers=1, seed=0)  # megatron-core's loss reads its TP group
    device = torch.device("cuda") if cuda else torch.device("cpu")
    shapes = [(128, 2)] if quick else [(256, 2)] if cpu else [(2048, 4), (2048, 8)]
    reps, warmup = (1, 1) if quick else (3, 1) if cpu else (10, 3)
    dtypes = [torch.float32, torch.bfloat16] if cpu else [torch.bfloat16]
    group = parallel_state.get_tensor_model_parallel_group()
    variants = {
        "chunked (ours)": lambda x, t: vocab_parallel_cross_entropy(x, t, group, compiled=cuda),
        "megatron-core": lambda x, t: megatron_loss(x, t),
    }
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "vocab": VOCAB, "reps": reps, "runs": []}
    for (seq, mbs), dtype in itertools.product(shapes, dtypes):
        g = torch.Generator().manual_seed(0)
        logits = (4 * torch.randn(seq, mbs, VOCAB, generator=g)).to(dtype).to(device)
        target = torch.randint(0, VOCAB, (seq, mbs), generator=g).to(device)
        for name, fn in variants.items():
            ms, peak = median_ms(functools.partial(run, fn, logits, target), reps, warmup, cuda)
            extra = peak - 2 * logits.numel() * logits.element_size()  # less run()'s two copies of the logits
            row = {"loss": name, "seq": seq, "micro_batch": mbs, "logits": str(dtype)[6:], "ms_fwd_bwd": ms,
                   "extra_gib": extra / 2**30 if cuda else None,
                   # one sequence: the fp64 reference of all 8 x 2048 would need 60 GB
                   **errors(fn, logits[:, :1].contiguous(), target[:, :1].contiguous())}
            result["runs"].append(row)
            print(f"{name}, {seq} x {mbs} tokens, {row['logits']} logits: {ms:.1f} ms forward + backward, "
                  + (f"{row['extra_gib']:.2f} GiB above the logits, " if cuda else "")
                  + f"loss rel max {row['loss rel max']:.2g}, gradient rel L2 {row['gradient rel L2']:.2g}",
                  flush=True)
        del logits
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
