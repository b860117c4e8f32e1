"""Checkpoints saved by the megatron engine on two processes, launched by torchrun; tests/test_checkpoint_layouts.py
reads OUT.

``--out ROOT`` runs three jobs in turn, re-creating megatron-core's groups for each:
- ``cp2``: context parallelism 2. megatron-core's local attention refuses it and flash-attn's needs CUDA, so the
  core attention is tests/varlen_stand_in.py's; the model is built and never run (that attention does not
  exchange keys across ranks), since what is under test is the checkpoint: after one optimizer step on zero
  gradients, saved through MegatronCheckpointer (model, optimizer, each rank's RNG states), then loaded by
  --load into a model built with another seed (not with the distributed optimizer: megatron-core resumes it
  only with apex's or transformer-engine's Adam, which the CPU lacks). Each rank's RNG first draws a
  rank-dependent number of values, so the two records differ. ROOT/cp2/rank{r}.json: the next draws after the
  save and after the resume, the layout record, whether the new model's weights differed from the saved ones,
  and whether every loaded weight equals the saved one.
- ``overlap`` and ``plain``: DP 2 with the distributed optimizer, with and without --overlap-param-gather: one
  training step, then a save. ROOT/{job}/initial.pt: the weights before the step (rank 0);
  params_rank{r}.pt: this rank's weights just after the save; loaded.pt: the weights read back from the
  checkpoint (rank 0).
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parity_worker import sample

from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.parallel_layout import current_layout
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model import spec
from megatron_qwen.model.builder import build_model, unwrap
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate, microbatch_indices
from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import train_step

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from varlen_stand_in import SegmentedSDPAAttention  # noqa: E402

SEQ, MICRO_BATCH, GLOBAL_BATCH = 32, 2, 4
BASE = ["--mock-data", "--model-size", "tiny", "--seq-length", str(SEQ), "--micro-batch-size", str(MICRO_BATCH),
        "--global-batch-size", str(GLOBAL_BATCH), "--train-iters", "1", "--lr", "1e-2", "--lr-warmup-iters", "0",
        "--hidden-dropout", "0", "--attention-dropout", "0"]


def weights(chunks) -> dict:
    return {n: p.detach().clone() for c in chunks for n, p in unwrap(c).named_parameters()}


def draws() -> list[float]:
    return torch.rand(3).tolist()


def engine(flags: list[str]):
    cfg = parse_run_config(PRETRAIN, BASE + flags)
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    model, optimizer, scheduler = build_model_and_optimizer(cfg)
    return cfg, model, MegatronCheckpointer(cfg, model, optimizer, scheduler), (optimizer, scheduler)


def run_cp2(root: str) -> None:
    spec.FlashSelfAttention = SegmentedSDPAAttention
    out, save = os.path.join(root, "cp2"), os.path.join(root, "cp2", "ckpt")
    flags = ["--context-parallel-size", "2", "--transformer-impl", "flash", "--save", save]
    _, model, checkpointer, (optimizer, _) = engine(flags + ["--seed", "1"])
    optimizer.step()  # on zero gradients: AdamW's state exists from its first step on
    torch.rand(5 + 3 * dist.get_rank())  # each rank's generator somewhere else
    checkpointer.save(TrainState(iteration=1, consumed_samples=GLOBAL_BATCH))
    after_save, saved = draws(), weights(model)
    parallel_state.destroy_model_parallel()
    _, model, checkpointer, _ = engine(flags + ["--seed", "2", "--load", save])
    other = weights(model)
    state = checkpointer.load()
    loaded = weights(model)
    result = {"after_save": after_save, "after_resume": draws(), "layout": current_layout(),
              "iteration": state.iteration, "weights_equal": all(torch.equal(loaded[n], saved[n]) for n in saved),
              "weights_differed": any(not torch.equal(other[n], saved[n]) for n in saved)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    parallel_state.destroy_model_parallel()


def run_step_and_save(root: str, name: str, flags: list[str]) -> None:
    out = os.path.join(root, name)
    cfg, model, checkpointer, (optimizer, scheduler) = engine(flags + ["--save", os.path.join(out, "ckpt")])
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    batches = [collate([sample(i, cfg.model.vocab_size) for i in mb])
               for mb in microbatch_indices(0, GLOBAL_BATCH, MICRO_BATCH, dp_rank, dp)]
    os.makedirs(out, exist_ok=True)
    if dist.get_rank() == 0:
        torch.save(weights(model), os.path.join(out, "initial.pt"))
    train_step(model, optimizer, scheduler, [iter(batches) for _ in model], len(batches), SEQ, MICRO_BATCH,
               GLOBAL_BATCH, torch.device("cpu"))
    checkpointer.save(TrainState(iteration=1, consumed_samples=GLOBAL_BATCH))
    torch.save(weights(model), os.path.join(out, f"params_rank{dist.get_rank()}.pt"))
    fresh = build_model(cfg.model, cfg.parallel, cfg.build, initialize=False)
    load_weights(iteration_dir(os.path.join(out, "ckpt"), 1), fresh)
    if dist.get_rank() == 0:
        torch.save(weights(fresh), os.path.join(out, "loaded.pt"))
    parallel_state.destroy_model_parallel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    root = ap.parse_args().out
    run_cp2(root)
    run_step_and_save(root, "overlap", ["--use-distributed-optimizer", "--overlap-grad-reduce",
                                        "--overlap-param-gather"])
    run_step_and_save(root, "plain", ["--use-distributed-optimizer"])
    destroy_distributed()


if __name__ == "__main__":
    main()
