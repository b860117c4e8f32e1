"""The reward model's layouts, launched by torchrun (or alone for one process); tests/test_reward_parity.py
reads OUT.

``--layouts '{"name": [flags...], ...}' --out ROOT`` runs each layout in turn in the same processes. Each
builds the reward recipe's model (tiny Qwen, the scalar head) from the same seed through the engine its
flags pick and takes STEPS optimizer steps on a fixed stream of synthetic pairs (random tokens, end tokens at
varying positions, right padding). It writes ROOT/name/:
  layout.json            the TP, PP and DP sizes the processes built
  report.json            per step: [loss, pair accuracy, mean margin] (the reporting rank)
  weights_rank{r}.pt     the initial weights, each rank's TP slices by global name (megatron engine, DP rank 0)
  grads_rank{r}.pt       the first step's gradients, likewise
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parity_worker import gather_reduce_scattered_grads, local_slices

from megatron_qwen.config.recipes import REWARD
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate, microbatch_indices
from megatron_qwen.training.engine import build_engine
from megatron_qwen.training.step import train_step

GLOBAL_BATCH, MICRO_BATCH, SEQ, STEPS, SEED, PAD = 8, 2, 32, 2, 1234, 0
FLAGS = ["--model-size", "tiny", "--seed", str(SEED), "--seq-length", str(SEQ), "--micro-batch-size",
         str(MICRO_BATCH), "--global-batch-size", str(GLOBAL_BATCH), "--train-iters", str(STEPS), "--lr", "1e-3",
         "--transformer-impl", "local", "--no-finetune", "--zero-bucket-size", "200000"]


def pair_sample(i: int, vocab: int) -> dict:
    """Sequence i of a fixed stream (pair i // 2, chosen when i is even): random tokens up to an end token at a
    position that differs from sequence to sequence, padding after it."""
    g = torch.Generator().manual_seed(20_000 + i)
    end = int(torch.randint(SEQ // 2, SEQ, (1,), generator=g))
    tokens = torch.randint(1, vocab, (SEQ,), generator=g)
    tokens[end + 1:] = PAD
    return {"tokens": tokens, "position_ids": torch.arange(SEQ), "attention_mask": None,
            "end_index": torch.tensor(end)}


def run_layout(flags: list[str], out: str) -> None:
    cfg = parse_run_config(REWARD, FLAGS + flags)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.parallel.validate(world, cfg.model.num_layers, cfg.model.num_attention_heads, cfg.model.padded_vocab_size)
    init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
    engine = build_engine(cfg, world, torch.device("cpu"))
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    rank, num_mb = dist.get_rank(), cfg.num_microbatches(world)
    os.makedirs(out, exist_ok=True)
    if rank == 0:
        with open(f"{out}/layout.json", "w") as f:
            json.dump({"tp": parallel_state.get_tensor_model_parallel_world_size(),
                       "pp": parallel_state.get_pipeline_model_parallel_world_size(), "dp": dp}, f)

    def batches(step: int) -> list[dict]:
        idx = microbatch_indices(step * GLOBAL_BATCH, GLOBAL_BATCH, MICRO_BATCH, dp_rank, dp)
        return [collate([pair_sample(i, cfg.model.vocab_size) for i in mb]) for mb in idx]

    megatron = not cfg.zero.deepspeed
    if megatron and dp_rank == 0:
        torch.save({k: v[:3] for k, v in local_slices(engine.model).items()}, f"{out}/weights_rank{rank}.pt")
    report, health = [], StepHealth(cfg.train)
    for step in range(STEPS):
        if megatron and step == 0:  # the megatron engine's step by hand, to read the gradients before the update
            figures: dict = {}
            loss, _, ok = train_step(engine.model, _GradsTaken(engine, out, rank, dp_rank), engine.scheduler,
                                     [iter(batches(0)) for _ in engine.model], num_mb, SEQ, MICRO_BATCH,
                                     GLOBAL_BATCH, torch.device("cpu"), figures=figures)
        else:
            loss, _, ok, _ = engine.train_step(batches(step), num_mb, health)
            figures = engine.figures
        assert ok
        report.append([loss, figures.get("pair accuracy"), figures.get("reward margin")])
    reporter = parallel_state.get_tensor_model_parallel_rank() == 0 and dp_rank == 0 and report[0][0] is not None
    if reporter:
        with open(f"{out}/report.json", "w") as f:
            json.dump(report, f)
    parallel_state.destroy_model_parallel()


class _GradsTaken:
    """The megatron engine's optimizer, saving this rank's gradients (full, by global name) once they are
    reduced and before the update."""

    def __init__(self, engine, out: str, rank: int, dp_rank: int):
        self.engine, self.optimizer, self.out, self.rank, self.dp_rank = engine, engine.optimizer, out, rank, dp_rank

    def prepare_grads(self):
        if self.engine.cfg.zero.distributed_optimizer:
            gather_reduce_scattered_grads(self.engine.model)
        if self.dp_rank == 0:
            torch.save({k: (v[0], v[1], v[3]) for k, v in local_slices(self.engine.model).items()},
                       f"{self.out}/grads_rank{self.rank}.pt")
        return self.optimizer.prepare_grads()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", required=True, help="JSON object: layout name -> its flags")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for name, flags in json.loads(a.layouts).items():
        run_layout(flags, os.path.join(a.out, name))
    destroy_distributed()


if __name__ == "__main__":
    main()
