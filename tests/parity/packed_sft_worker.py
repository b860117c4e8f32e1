"""Packed SFT batches through the pipeline schedule, launched by torchrun (or alone for one process);
tests/test_packed_sft.py reads OUT.

``--layouts '{"name": [flags...]}' --out ROOT`` runs, for each layout, one forward and backward of a fixed
global batch of packed samples (random conversations of 3 to 12 tokens, random loss masks; the boundaries as
the dataset gives them, model/packing.py) and writes ROOT/name/loss.json (the token-weighted loss),
grads_rank{r}.pt (parity_worker's slices of the gradients, DP rank 0) and, from rank 0, batches.pt (this DP
rank's micro-batches: the whole global batch at DP 1), which the test runs through one process as the
reference. With ``--transformer-impl flash`` the core attention is tests/varlen_stand_in.py's sdpa per segment,
in fp32: the THD form of the boundaries on the CPU.
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parity_worker import local_slices

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model import spec
from megatron_qwen.model.packing import describe_segments
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate, microbatch_indices
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import run_microbatches

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from varlen_stand_in import SegmentedSDPAAttention  # noqa: E402

GLOBAL_BATCH, MICRO_BATCH, SEQ, SEED = 8, 2, 32, 5


def packed_sample(i: int, vocab: int) -> dict:
    """Sample i of a fixed stream: conversations of 3 to 12 tokens while they fit, then padding."""
    g = torch.Generator().manual_seed(20_000 + i)
    lengths = []
    while True:
        n = int(torch.randint(3, 13, (1,), generator=g))
        if sum(lengths) + n > SEQ:
            break
        lengths.append(n)
    return {"tokens": torch.randint(0, vocab, (SEQ,), generator=g),
            "labels": torch.randint(0, vocab, (SEQ,), generator=g),
            "loss_mask": (torch.rand(SEQ, generator=g) > 0.3).float(),
            "position_ids": torch.cat([torch.arange(n) for n in lengths + [SEQ - sum(lengths)]]),
            "cu_seqlens": describe_segments(lengths, SEQ)}


def run_layout(layout_flags: list[str], out: str) -> None:
    flags = ["--mock-data", "--model-size", "tiny", "--seed", str(SEED), "--seq-length", str(SEQ),
             "--micro-batch-size", str(MICRO_BATCH), "--global-batch-size", str(GLOBAL_BATCH), "--train-iters", "1",
             "--hidden-dropout", "0", "--attention-dropout", "0", *layout_flags]
    cfg = parse_run_config(PRETRAIN, flags)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world)
    init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
    model, optimizer, _ = build_model_and_optimizer(cfg)
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    idx = microbatch_indices(0, GLOBAL_BATCH, MICRO_BATCH, dp_rank, dp)
    batches = [collate([packed_sample(i, cfg.model.vocab_size) for i in mb]) for mb in idx]
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss = run_microbatches(model, [iter(batches) for _ in model], len(batches), SEQ, MICRO_BATCH,
                            torch.device("cpu"))
    os.makedirs(out, exist_ok=True)
    rank = dist.get_rank()
    if dp_rank == 0:
        torch.save({k: (v[0], v[1], v[3]) for k, v in local_slices(model).items()}, f"{out}/grads_rank{rank}.pt")
    if rank == 0:
        torch.save(batches, f"{out}/batches.pt")
    if loss is not None and parallel_state.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
        with open(f"{out}/loss.json", "w") as f:
            json.dump(loss, f)
    parallel_state.destroy_model_parallel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", required=True, help="JSON object: layout name -> its training flags")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec.FlashSelfAttention = SegmentedSDPAAttention  # "flash" here: the THD stand-in, in fp32
    for name, flags in json.loads(a.layouts).items():
        run_layout(flags, os.path.join(a.out, name))
    destroy_distributed()


if __name__ == "__main__":
    main()
