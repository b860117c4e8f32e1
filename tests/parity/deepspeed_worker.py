"""The DeepSpeed engine's checks, run by torchrun (or alone for one process); tests/test_deepspeed.py reads OUT.

``--parity '{"name": [flags...]}'`` trains the tiny Qwen 5 steps on parity_worker's fixed batch stream
(loss masks with holes) through the engine the flags pick, and writes OUT/name/losses.json,
grad_norms.json, params.json (parameters per rank) and, for the deepspeed engine, bytes_rank{r}.json
(sharded_state_bytes). With --save in the flags it also saves the engine's checkpoint after the 5 steps
and weights_rank{r}.pt: this rank's full fp32 weights by name (tp rank, partition dim, tensor).

``--jobs`` runs the entry points' train() on the deepspeed engine: ZeRO-3 pretraining 4 iterations
uninterrupted, then 2 saving each, a truncated file in the second checkpoint, and a --load-fallback
resume from the first to 4 (OUT/jobs/*.jsonl); 2 iterations at TP2 saved and resumed to 4 at DP2
(ZeRO-3 to ZeRO-3, ZeRO-1 to ZeRO-2: universal checkpoints, OUT/jobs/ckpt_tp2_zero{1,3}); 4 iterations
with a NaN injected at the second, on ZeRO-3 and on the megatron engine; and 2 iterations of sft (from
scratch) and sft_math (from that checkpoint's weights).

``--convert '{"name": "ds checkpoint root"}'`` (one process) converts each with tools/convert_checkpoint.py,
exports the result to Hugging Face, and writes the converted weights (OUT/convert/name.pt).
"""

import argparse
import glob
import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parity_worker import GLOBAL_BATCH, MICRO_BATCH, SEED, SEQ, STEPS, sample

from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.recipes import PRETRAIN, SFT, SFT_MATH
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate, microbatch_indices
from megatron_qwen.training.engine import build_engine

PARITY_FLAGS = ["--mock-data", "--model-size", "tiny", "--seed", str(SEED), "--seq-length", str(SEQ),
                "--micro-batch-size", str(MICRO_BATCH), "--global-batch-size", str(GLOBAL_BATCH),
                "--train-iters", str(STEPS), "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "1",
                "--transformer-impl", "local", "--zero-bucket-size", "200000",
                # low enough that clipping acts at every step (the test checks the norms exceed it)
                "--clip-grad", "0.3"]
JOB_FLAGS = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
             "--global-batch-size", "8", "--lr", "1e-3", "--lr-warmup-iters", "1", "--eval-interval", "1000",
             "--seed", "7", "--zero-engine", "deepspeed", "--zero-bucket-size", "200000", "--transformer-impl", "local",
             # large enough that weight decay applied to the no-decay group (biases, norms) shows in 2 steps
             "--weight-decay", "1.0"]


def run_parity(name: str, extra: list[str], root: str) -> None:
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    cfg = parse_run_config(PRETRAIN, PARITY_FLAGS + extra)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world)
    init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
    engine = build_engine(cfg, world, torch.device("cpu"))
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    rank, num_mb = dist.get_rank(), cfg.num_microbatches(world)
    module = engine.model[0].module if hasattr(engine.model[0], "module") else engine.model[0]
    params = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
    losses, norms, health = [], [], StepHealth(cfg.train)
    for step in range(STEPS):
        idx = microbatch_indices(step * GLOBAL_BATCH, GLOBAL_BATCH, MICRO_BATCH, dp_rank, dp)
        batches = [collate([sample(i, cfg.model.vocab_size) for i in mb]) for mb in idx]
        loss, norm, ok, _ = engine.train_step(batches, num_mb, health)
        assert ok
        losses.append(loss)
        norms.append(float(norm))
    if rank == 0:
        for file, value in (("losses", losses), ("grad_norms", norms), ("params", params)):
            with open(f"{out}/{file}.json", "w") as f:
                json.dump(value, f)
    if cfg.parallel.sequence_parallel:
        spread = tp_replica_spread(module, cfg.zero.deepspeed and cfg.zero.stage == 3)
        if rank == 0:
            with open(f"{out}/tp_replica_spread.json", "w") as f:
                json.dump(spread, f)
    if cfg.zero.deepspeed:
        from megatron_qwen.training.deepspeed_engine import sharded_state_bytes

        with open(f"{out}/bytes_rank{rank}.json", "w") as f:
            json.dump(sharded_state_bytes(engine), f)
        with open(f"{out}/dtypes.json", "w") as f:
            json.dump(deepspeed_dtypes(engine), f)
    if cfg.checkpoint.save:
        engine.checkpointer.save(TrainState(iteration=STEPS, consumed_samples=STEPS * GLOBAL_BATCH))
        dump_full_weights(engine, f"{out}/weights_rank{rank}.pt")
    parallel_state.destroy_model_parallel()


def tp_replica_spread(module, stage3: bool) -> float:
    """The largest difference between the tensor-parallel ranks' copies of the parameters megatron-core marks
    ``sequence_parallel`` (replicated over TP: the norms), gathered from ZeRO-3's partitions first."""
    import deepspeed

    params = [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]
    assert params
    with deepspeed.zero.GatheredParameters(params, enabled=stage3):
        mine = torch.cat([p.detach().float().flatten() for p in params])
    copies = [torch.empty_like(mine) for _ in range(parallel_state.get_tensor_model_parallel_world_size())]
    dist.all_gather(copies, mine, group=parallel_state.get_tensor_model_parallel_group())
    return max((c - copies[0]).abs().max().item() for c in copies)


def deepspeed_dtypes(engine) -> dict:
    """What DeepSpeed itself runs in: the model, the gradient accumulation and reduction, the fp32 master copy."""
    from megatron_qwen.training.deepspeed_engine import master_partitions

    model, accumulation = engine.engine.get_data_types()
    return {"model": str(model), "grad_accum": str(accumulation),
            "communication": str(engine.engine.communication_data_type),
            "master": sorted({str(t.dtype) for t in master_partitions(engine.engine.optimizer)})}


def dump_full_weights(engine, path: str) -> None:
    """This TP rank's fp32 weights (stage 3: gathered from the DP partitions), written by DP rank 0."""
    import deepspeed

    module = engine.engine.module
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=engine.cfg.zero.stage == 3):
        weights = {n: (tp_rank, p.partition_dim if getattr(p, "tensor_model_parallel", False) else None,
                       p.detach().clone()) for n, p in module.named_parameters()}
    if parallel_state.get_data_parallel_rank() == 0:
        torch.save(weights, path)


def run_jobs(root: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    from nan_injection import nan_loss_at

    from megatron_qwen.training.loop import train

    out = os.path.join(root, "jobs")
    os.makedirs(out, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ckpt = os.path.join(out, "ckpt")

    def job(recipe, *extra):
        cfg = parse_run_config(recipe, JOB_FLAGS + list(extra))
        cfg.validate(world)
        last = train(cfg, world)
        parallel_state.destroy_model_parallel()
        return last

    z3 = ["--zero-stage", "3", "--train-iters", "4"]
    job(PRETRAIN, *z3, "--metrics-file", f"{out}/uninterrupted.jsonl")
    job(PRETRAIN, *z3, "--save", ckpt, "--save-interval", "1", "--exit-interval", "2",
        "--metrics-file", f"{out}/first.jsonl")
    if dist.get_rank() == 0:  # damage the latest checkpoint after it was written: its largest file loses a byte
        damaged = max(glob.glob(f"{ckpt}/iter_0000002/*.pt"), key=os.path.getsize)
        os.truncate(damaged, os.path.getsize(damaged) - 1)
    dist.barrier()
    job(PRETRAIN, *z3, "--save", ckpt, "--load", ckpt, "--load-fallback", "--metrics-file", f"{out}/resumed.jsonl")
    # Layout changes through DeepSpeed's universal checkpoint, with the optimizer state: 2 iterations at TP2 x DP1,
    # then 2 at TP1 x DP2, ZeRO-3 to ZeRO-3 and ZeRO-1 to ZeRO-2 (its stage 1/2 conversion and loader).
    for saved, resumed in (("3", "3"), ("1", "2")):
        tp2 = os.path.join(out, f"ckpt_tp2_zero{saved}")
        job(PRETRAIN, "--zero-stage", saved, "--train-iters", "4", "--tensor-model-parallel-size", "2", "--save", tp2,
            "--save-interval", "2", "--exit-interval", "2")
        job(PRETRAIN, "--zero-stage", resumed, "--train-iters", "4", "--load", tp2,
            "--metrics-file", f"{out}/tp2_zero{saved}_to_dp2_zero{resumed}.jsonl")
    # A NaN loss in data-parallel rank 1's first micro-batch at iteration 2, on ZeRO-3 and on the megatron
    # engine (whose skip test_reliability_nan.py checks against a run that never applied that batch).
    with nan_loss_at({2}, dp_rank=1):
        job(PRETRAIN, *z3, "--metrics-file", f"{out}/nan_zero3.jsonl")
        job(PRETRAIN, "--zero-engine", "megatron", "--zero-stage", "0", "--train-iters", "4",
            "--metrics-file", f"{out}/nan_megatron.jsonl")
    # 2 iterations of each SFT job, evaluating at the second (the engine's model through megatron-core's schedule):
    # chat SFT from scratch at ZeRO-2, Math SFT from the ZeRO-3 checkpoint's weights (its recipe's --finetune).
    sft = ["--train-iters", "2", "--eval-interval", "2", "--eval-iters", "1"]
    last = {"sft": job(SFT, *sft, "--zero-stage", "2", "--no-finetune"),
            "sft_math": job(SFT_MATH, *sft, "--zero-stage", "3", "--load", ckpt)}
    if dist.get_rank() == 0:
        with open(f"{out}/entry_points.json", "w") as f:
            json.dump({k: [v.get("lm_loss"), v.get("validation_loss")] for k, v in last.items()}, f)


def run_convert(sources: dict, root: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "tools"))
    import convert_checkpoint
    from safetensors.torch import load_file

    from megatron_qwen.checkpointing.directory import iteration_dir, latest_iteration
    from megatron_qwen.checkpointing.weights import load_weights
    from megatron_qwen.model.builder import build_model

    out = os.path.join(root, "convert")
    os.makedirs(out, exist_ok=True)
    for name, src in sources.items():
        ours, hf = os.path.join(out, name + "_ours"), os.path.join(out, name + "_hf")
        assert convert_checkpoint.main(["--load-dir", src, "--save-dir", ours]) == 0
        assert convert_checkpoint.main(["--load-dir", ours, "--save-dir", hf, "--hf-layout", "qwen2"]) == 0
        # The converted checkpoint read back by a job's own loader, at TP1.
        cfg = parse_run_config(PRETRAIN, PARITY_FLAGS + ["--load", ours])
        init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
        chunks = build_model(cfg.model, cfg.parallel, cfg.build)
        load_weights(iteration_dir(ours, latest_iteration(ours)), chunks)
        weights = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}
        weights["hf:lm_head.weight"] = load_file(os.path.join(hf, "model.safetensors"))["lm_head.weight"]
        torch.save(weights, os.path.join(out, name + ".pt"))
        destroy_distributed()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--parity", default="{}")
    ap.add_argument("--jobs", action="store_true")
    ap.add_argument("--convert", default="{}")
    a = ap.parse_args()
    for name, extra in json.loads(a.parity).items():
        run_parity(name, extra, a.out)
    if a.jobs:
        run_jobs(a.out)
    run_convert(json.loads(a.convert), a.out)
    destroy_distributed()


if __name__ == "__main__":
    main()
