"""Packed SFT against padded SFT, per conversation, on each back end (bench/gpu_check.sh's packed-SFT stage).

    python bench/gpu/check_packed_sft.py OUT.json [--quick]

The tiny preset in bf16, its initial weights drawn on the CPU; 40 random conversations of 8 to 60 tokens (random
ids and loss masks) written as SFT shards in a scratch directory. The SFT dataset packs them into samples of 128
tokens; the reference is the same conversations one per sample (padded: plain causal attention, no boundaries).
Each back end runs both: transformer-engine and flash-attn take the packed samples as megatron-core's THD layout
(PackedSeqParams: TE's attention, flash-attn's varlen kernel), sdpa and local as a block-diagonal mask
(model/packing.py). Checked for sdpa and local everywhere, te and flash where they import:
- per conversation, the mean loss over its trained tokens, packed against padded: the worst relative
  difference, tolerance 1e-3;
- every parameter's gradient of the summed loss: the worst relative L2, tolerance 3e-2;
- the control: the packed samples with their boundaries dropped (each conversation then sees those before it in
  its sample) must miss both tolerances, or the check could not tell a leak from rounding.
Tolerances, and why (CPU, sdpa, bf16, this script's data): a conversation's loss moves by 4.5e-5 between the packed
and padded runs (other kernels, the same arithmetic) and by 7e-3 when the boundaries are dropped, so 1e-3 leaves GPU
kernels that accumulate in another order 20 times the CPU's difference and still fails a leak; the gradients move
by 6.6e-3 (worst tensor) between the two runs and by 0.96 with the leak. --quick (the CPU dry run): 12 conversations.
"""

import json
import sys
import tempfile

import numpy as np
import torch
from check_correctness import backends, check, print_checks

from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.data import SFTDataset
from megatron_qwen.data.shards import IndexedShardWriter, loss_mask_prefix
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import compute_device, init_distributed, on_gpu
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate
from megatron_qwen.training.step import model_inputs

SEQ, EOD, SAMPLES = 128, 1023, 4
TOL_CONVERSATION_LOSS, TOL_GRAD = 1e-3, 3e-2


def write_conversations(prefix: str, count: int) -> None:
    g = np.random.default_rng(0)
    lengths = g.integers(8, 61, count)
    ids, masks = g.integers(0, 1000, lengths.sum()), (g.random(lengths.sum()) > 0.3).astype(np.uint8)
    for path, values, dtype in ((prefix, ids, np.int32), (loss_mask_prefix(prefix), masks, np.uint8)):
        with IndexedShardWriter(path, dtype) as w:
            w.add_documents(values.astype(dtype), lengths.tolist())


def run(backend: str, batch: dict) -> tuple[torch.Tensor, dict]:
    """(each position's loss, [samples, SEQ]; the gradients of the summed trained-token loss) from the tiny model's
    initial weights."""
    flags = ["--mock-data", "--model-size", "tiny", "--seed", "5", "--bf16", "--use-cpu-initialization",
             "--hidden-dropout", "0", "--attention-dropout", "0", "--transformer-impl", backend]
    cfg = parse_run_config(PRETRAIN, flags)
    (chunk,) = build_model(cfg.model, cfg.parallel, cfg.build)
    chunk = chunk.to(compute_device())
    staged = {k: None if v is None else v.to(compute_device()) for k, v in batch.items()}
    losses = chunk(**model_inputs(staged, chunk)).float().reshape(batch["tokens"].shape)
    (losses * staged["loss_mask"]).sum().backward()
    return losses.detach().cpu(), {n: p.grad.float().cpu() for n, p in chunk.named_parameters()}


def per_conversation(losses: torch.Tensor, batch: dict, segments: list[list[tuple[int, int]]]) -> list[float]:
    """The mean loss over each conversation's trained tokens; ``segments``: per sample, (start, end) of each."""
    out = []
    for i, spans in enumerate(segments):
        for start, end in spans:
            mask = batch["loss_mask"][i, start:end]
            out.append(float((losses[i, start:end] * mask).sum() / mask.sum()))
    return out


def worst_grad_error(grads: dict, ref: dict) -> float:
    return max(((grads[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)


def compare(backend: str, packed: dict, padded: dict, segments: list) -> list[dict]:
    losses, grads = run(backend, packed)
    ref_losses, ref_grads = run(backend, padded)
    ref = per_conversation(ref_losses, padded, [[(0, SEQ)] for _ in range(padded["tokens"].shape[0])])
    leak_losses, leak_grads = run(backend, {**packed, "cu_seqlens": None})
    out = []
    for label, (l, g) in (("packed", (losses, grads)), ("control, boundaries dropped", (leak_losses, leak_grads))):
        got = per_conversation(l, packed, segments)
        worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
        name = f"{backend} bf16, {label} vs padded"
        out += [check(f"{name}: per-conversation loss ({len(ref)})", worst, TOL_CONVERSATION_LOSS, "worst relative"),
                check(f"{name}: gradients", worst_grad_error(g, ref_grads), TOL_GRAD, "worst relative L2")]
    for control in out[2:]:  # the leak must show, else the check could not tell one
        control["pass"] = not control["pass"]
        control["metric"] += " (must exceed)"
    return out


def main() -> int:
    out_path, quick = sys.argv[1], "--quick" in sys.argv
    init_distributed(ParallelSettings(), 4, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        count = 12 if quick else 40
        write_conversations(f"{tmp}/sft", count)
        packed_ds = SFTDataset(f"{tmp}/sft", 0, count, SEQ, num_samples=SAMPLES, seed=0, pack=True, eod=EOD)
        padded_ds = SFTDataset(f"{tmp}/sft", 0, count, SEQ, num_samples=1, seed=0, pack=False, eod=EOD)
        packed = collate([packed_ds[i] for i in range(SAMPLES)])
        docs = [list(packed_ds.samples[i]) for i in range(SAMPLES)]
        padded = collate([padded_ds.sample([doc]) for sample in docs for doc in sample])
    segments = [[(int(cu[k]), int(cu[k + 1])) for k in range(len(d))] for cu, d in zip(packed["cu_seqlens"], docs)]
    checks = [c for backend in backends() for c in compare(backend, packed, padded, segments)]
    with open(out_path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if on_gpu() else "cpu", "seq_length": SEQ,
                   "conversations": sum(map(len, docs)), "checks": checks}, f, indent=1)
    return print_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
