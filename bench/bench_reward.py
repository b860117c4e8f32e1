"""Throughput of a reward-model step beside a pretraining step of the same model and shape, in one run.

    python bench/bench_reward.py                        # CPU: tiny preset, seq 256, micro-batch 4
    python bench/bench_reward.py --model-size 1.8b --num-layers 12 --bf16 --seq-length 2048 \\
        --micro-batch-size 4                             # one GPU (bench/gpu_check.sh)

Both models are built from the same flags (any flag of `python -m megatron_qwen.pretrain`: the shape, back end,
precision, parallel layout) by the megatron engine and stepped by training/step.py's train_step on the same
random tokens, one micro-batch per data-parallel rank: the pretraining step's loss over every token, the reward
step's pairwise loss over the same sequences taken as pairs, end tokens at random positions. Rounds alternate
the two (--rounds, --steps each); a round's figure is its mean step time, the best round of each is reported.

Printed: tokens/s/GPU of each, their ratio, and the cost of one pair over one pretraining sequence (two
sequences forward and backward: 2.0 when the heads cost the same; below 2 as the scalar head skips the
vocabulary projection and its cross entropy). --json PATH writes every figure.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
from bench_train import _synchronize, device_description, synthetic_batches

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN, REWARD
from megatron_qwen.platform.distributed import compute_device, destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import train_step

CPU_DEFAULT_FLAGS = ("--model-size", "tiny", "--seq-length", "256", "--micro-batch-size", "4")


def configs(flags: list[str], world_size: int):
    """(pretraining, reward) configs of the same flags, one micro-batch per data-parallel rank, constant LR."""
    common = ["--train-iters", "1000", "--lr", "1e-4", "--lr-warmup-iters", "0", "--lr-decay-style", "constant"]
    lm = parse_run_config(PRETRAIN, ["--mock-data", *common, *flags])
    if "--global-batch-size" not in flags:
        common += ["--global-batch-size", str(lm.train.micro_batch_size * lm.parallel.data_parallel_size(world_size))]
        lm = parse_run_config(PRETRAIN, ["--mock-data", *common, *flags])
    return lm, parse_run_config(REWARD, [*common, "--no-finetune", *flags])


def reward_batches(lm_batches: list[dict], seed: int = 1) -> list[dict]:
    """The pretraining micro-batches' tokens as pairs, each sequence's end token at a random position."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in lm_batches:
        rows, seq = b["tokens"].shape
        out.append({"tokens": b["tokens"], "position_ids": b["position_ids"], "attention_mask": None,
                    "end_index": torch.randint(seq // 2, seq, (rows,), generator=g)})
    return out


class Stepper:
    def __init__(self, cfg, batches, num_mb: int, device):
        self.cfg, self.batches, self.num_mb, self.device = cfg, batches, num_mb, device
        self.model, self.optimizer, self.scheduler = build_model_and_optimizer(cfg)

    def mean_step_s(self, steps: int) -> float:
        t = self.cfg.train
        _synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            train_step(self.model, self.optimizer, self.scheduler, [iter(self.batches) for _ in self.model],
                       self.num_mb, t.seq_length, t.micro_batch_size, t.global_batch_size, self.device)
        _synchronize()
        return (time.perf_counter() - start) / steps


def measure(flags: list[str], rounds: int, steps: int) -> dict:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    lm_cfg, rm_cfg = configs(flags, world_size)
    lm_cfg.validate(world_size)  # the layout; the reward model's data rules need shards, not this benchmark
    if rm_cfg.train.micro_batch_size % 2:
        raise ConfigError(f"--micro-batch-size {rm_cfg.train.micro_batch_size} is odd: a pair's two sequences "
                          "share a micro-batch")
    init_distributed(lm_cfg.parallel, lm_cfg.model.num_layers, lm_cfg.build.seed)
    device, num_mb = compute_device(), lm_cfg.num_microbatches(world_size)
    lm_batches = synthetic_batches(lm_cfg, num_mb)
    lm = Stepper(lm_cfg, lm_batches, num_mb, device)
    rm = Stepper(rm_cfg, reward_batches(lm_batches), num_mb, device)
    lm.mean_step_s(1), rm.mean_step_s(1)  # warm-up: allocator growth, kernel selection
    times = {"pretrain": [], "reward": []}
    for _ in range(rounds):
        times["pretrain"].append(lm.mean_step_s(steps))
        times["reward"].append(rm.mean_step_s(steps))
    t = lm_cfg.train
    tokens_per_gpu = t.global_batch_size * t.seq_length / world_size
    best = {k: min(v) for k, v in times.items()}
    return {"device": device_description(), "world_size": world_size, "model_size": lm_cfg.model_size,
            "num_layers": lm_cfg.model.num_layers, "hidden_size": lm_cfg.model.hidden_size,
            "vocab_rows": lm_cfg.model.padded_vocab_size, "seq_length": t.seq_length,
            "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size,
            "precision": lm_cfg.build.precision, "transformer_impl": lm_cfg.build.transformer_impl,
            "rounds": rounds, "steps_per_round": steps, "round_step_s": times, "best_step_s": best,
            "median_step_s": {k: statistics.median(v) for k, v in times.items()},
            "tokens_per_s_per_gpu": {k: tokens_per_gpu / s for k, s in best.items()},
            "reward_over_pretrain_tokens_per_s": best["pretrain"] / best["reward"],
            "pair_over_sequence_cost": 2 * best["reward"] / best["pretrain"]}


def report(r: dict) -> str:
    tps = r["tokens_per_s_per_gpu"]
    return "\n".join([
        f"model: {r['model_size']} ({r['num_layers']} layers, hidden {r['hidden_size']}, {r['vocab_rows']} vocabulary "
        f"rows), seq {r['seq_length']}, micro-batch {r['micro_batch_size']}, global batch {r['global_batch_size']} "
        f"sequences; {r['precision']}, back end {r['transformer_impl']}, {r['world_size']} process(es), "
        f"device {r['device']}",
        f"best of {r['rounds']} rounds of {r['steps_per_round']} steps each, alternating",
        f"pretraining step: {r['best_step_s']['pretrain'] * 1e3:.1f} ms, {tps['pretrain']:,.1f} tokens/s/GPU",
        f"reward step:      {r['best_step_s']['reward'] * 1e3:.1f} ms, {tps['reward']:,.1f} tokens/s/GPU "
        f"({r['reward_over_pretrain_tokens_per_s']:.2f}x the pretraining step's)",
        f"one pair (two sequences, forward and backward) costs {r['pair_over_sequence_cost']:.2f} pretraining "
        "sequences",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps of each kind per round")
    ap.add_argument("--json", default=None)
    args, flags = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        result = measure(flags or list(CPU_DEFAULT_FLAGS), args.rounds, args.steps)
    except ConfigError as e:  # a flag that cannot run: one line, as the training entry points say it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if torch.distributed.get_rank() == 0:
        print(report(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
