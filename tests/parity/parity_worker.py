"""Parallel layouts of the parity suite, launched by torchrun (or alone for one process).

``--layouts '{"name": [flags...], ...}' --out ROOT`` runs each layout in turn in the same processes
(one launch per process count: start-up dominates these tiny runs), re-creating megatron-core's
groups for each; ROOT/name receives its files. For each layout it trains the tiny Qwen for a few
optimizer steps on a fixed global batch stream and writes:
  weights.pt  the initial weights, each rank's TP slices by global name (DP rank 0 only)
  grads.pt    the gradients of the first step, likewise
  losses.json the loss of every step (written by the reporting rank)
  layout.json the layout the processes built from the flags: TP, PP, DP sizes, model chunks per stage
  logits.pt   the reference's initial logits on the first micro-batch (single process only)
  sdpa_grads.pt, sdpa_loss.json
              the first step again with PyTorch's fused attention (the sdpa back end) in place of
              the local one, from the same initial weights (local runs only)
The test merges the slices with megatron_qwen.model.layout and compares layouts.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.layout import global_param_names
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate, microbatch_indices
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import run_microbatches, train_step

GLOBAL_BATCH, MICRO_BATCH, SEQ, STEPS, SEED = 8, 2, 32, 5, 1234


def sample(i: int, vocab: int) -> dict:
    """Sample i of a fixed stream: random tokens and a loss mask with holes (so token-weighted
    averaging over micro-batches is exercised)."""
    g = torch.Generator().manual_seed(10_000 + i)
    seq = torch.randint(0, vocab, (SEQ + 1,), generator=g)
    mask = (torch.rand(SEQ, generator=g) > 0.3).float()
    return {"tokens": seq[:-1], "labels": seq[1:], "loss_mask": mask,
            "position_ids": torch.arange(SEQ), "attention_mask": None}


def local_slices(model) -> dict:
    """{global name: (tp rank, partition dim or None, weight, grad)} for this rank's chunks."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    out = {}
    for chunk in model:
        inner = chunk.module
        for name, gname in global_param_names(inner).items():
            p = dict(inner.named_parameters())[name]
            dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
            grad = p.main_grad.detach().clone() if getattr(p, "main_grad", None) is not None else None
            out[gname] = (tp_rank, dim, p.detach().clone(), grad)
    return out


def gather_reduce_scattered_grads(model) -> None:
    """With the distributed optimizer each DP rank holds only its shard of the reduced grads;
    all-gather the shards so every rank sees full gradients (test-only inspection)."""
    for chunk in model:
        for group in chunk.bucket_groups:
            pg = group.intra_distributed_optimizer_instance_group
            size, rank = pg.size(), pg.rank()
            for bucket in group.buckets:
                shard = bucket.grad_data.numel() // size
                mine = bucket.grad_data[rank * shard:(rank + 1) * shard].clone()
                dist.all_gather_into_tensor(bucket.grad_data, mine, group=pg)


def run_each_layout(run) -> None:
    """A worker's command line: ``--layouts '{"name": [flags...]}' --out ROOT``; ``run(flags, ROOT/name)`` for each
    layout in turn, in the same processes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", required=True,
                    help="JSON object: layout name -> its training flags (the entry points' own, e.g. "
                         "--tensor-model-parallel-size 2 --use-distributed-optimizer)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for name, flags in json.loads(a.layouts).items():
        if dist.is_initialized() and dist.get_rank() == 0:
            print(f"parity layout {name}", flush=True)
        run(flags, os.path.join(a.out, name))
    destroy_distributed()


def main():
    run_each_layout(run_layout)


def run_layout(layout_flags: list[str], out: str) -> None:
    flags = ["--mock-data", "--model-size", "tiny", "--seed", str(SEED), "--seq-length", str(SEQ),
             "--micro-batch-size", str(MICRO_BATCH), "--global-batch-size", str(GLOBAL_BATCH), "--train-iters",
             str(STEPS), "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "1", *layout_flags]
    cfg = parse_run_config(PRETRAIN, flags)
    distopt = cfg.zero.distributed_optimizer
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.parallel.validate(world, cfg.model.num_layers, cfg.model.num_attention_heads, cfg.model.padded_vocab_size)
    init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
    model, optimizer, scheduler = build_model_and_optimizer(cfg)

    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    num_mb = GLOBAL_BATCH // (MICRO_BATCH * dp)
    cpu = torch.device("cpu")

    def batches(step):
        idx = microbatch_indices(step * GLOBAL_BATCH, GLOBAL_BATCH, MICRO_BATCH, dp_rank, dp)
        return [collate([sample(i, cfg.model.vocab_size) for i in mb]) for mb in idx]

    os.makedirs(out, exist_ok=True)
    rank = dist.get_rank()
    if rank == 0:
        with open(f"{out}/layout.json", "w") as f:
            json.dump({"tp": parallel_state.get_tensor_model_parallel_world_size(),
                       "pp": parallel_state.get_pipeline_model_parallel_world_size(), "dp": dp,
                       "chunks": len(model)}, f)
    initial = local_slices(model)
    if world == 1:  # logits of the initial weights, for the transformers comparison
        with torch.no_grad():
            x = batches(0)[0]
            logits = model[0].module(x["tokens"], x["position_ids"], None)
        torch.save({"tokens": x["tokens"], "logits": logits}, f"{out}/logits.pt")

    def first_step(model, optimizer, prefix: str) -> float | None:
        """Step 1's backward by hand, to read the gradients before the update; saves them."""
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        b = batches(0)
        loss = run_microbatches(model, [iter(b) for _ in model], num_mb, SEQ, MICRO_BATCH, cpu)
        if distopt:
            gather_reduce_scattered_grads(model)
        first = local_slices(model)
        if dp_rank == 0:
            torch.save({k: (v[0], v[1], v[3]) for k, v in first.items()}, f"{out}/{prefix}grads_rank{rank}.pt")
        return loss

    if dp_rank == 0:
        torch.save({k: v[:3] for k, v in initial.items()}, f"{out}/weights_rank{rank}.pt")
    losses = [first_step(model, optimizer, "")]
    optimizer.step()
    scheduler.step(increment=GLOBAL_BATCH)
    for step in range(1, STEPS):
        b = batches(step)
        loss, _, _ = train_step(model, optimizer, scheduler, [iter(b) for _ in model], num_mb, SEQ,
                                MICRO_BATCH, GLOBAL_BATCH, cpu)
        losses.append(loss)
    reports = parallel_state.get_tensor_model_parallel_rank() == 0 and dp_rank == 0 and losses[0] is not None
    if reports:
        with open(f"{out}/losses.json", "w") as f:
            json.dump(losses, f)
    if cfg.build.transformer_impl == "local":  # the same layout with PyTorch's fused attention
        sdpa_cfg = parse_run_config(PRETRAIN, flags + ["--transformer-impl", "sdpa"])
        sdpa_model, sdpa_optimizer, _ = build_model_and_optimizer(sdpa_cfg)
        sdpa_loss = first_step(sdpa_model, sdpa_optimizer, "sdpa_")
        if reports:
            with open(f"{out}/sdpa_loss.json", "w") as f:
                json.dump(sdpa_loss, f)
    parallel_state.destroy_model_parallel()  # the next layout builds its own groups


if __name__ == "__main__":
    main()
