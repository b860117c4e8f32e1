"""PPO's rollout speed against transformers' generate on the same weights and batch, and the share of a PPO iteration
spent in rollouts (docs/ppo.md).

    python bench/bench_ppo.py                       # tiny random export, 16 responses of 64 tokens, best of 3
    python bench/bench_ppo.py --responses 64 --new-tokens 128 --iterations 4 --json out.json

The policy is a random qwen2 export (megatron_qwen/hf/random_model.py's TINY_EXPORT_MODEL: 2 layers, hidden 128,
Qwen's 151,936 vocabulary rows), the reward model a random one of the same shape. One batch of --responses rows
(--responses / 2 prompts, two samples each, as a PPO iteration draws them), top-p 0.9, no stop ids, so that both
produce exactly --new-tokens per row, timed around the generate call (one warm-up call first), best of --rounds:
- rollout: the PPO job's own decoding (training/ppo_rollout.py's sample_responses on the job's DDP-wrapped policy:
  the KV-cache decoder of inference/generate.py), in this process;
- transformers: Qwen2ForCausalLM.generate(do_sample=True, top_p=0.9, top_k=0) on the export, left-padded.
Then --iterations PPO iterations of python -m megatron_qwen.ppo on the same models (responses of up to --new-tokens;
the first is the value-only warm-up's, so --value-warmup-iters 1) report the share of each iteration spent in
rollouts (generation and the four scoring passes) and the rollout tokens/s the job logs. Never fails on a timing.
"""

import argparse
import json
import os
import tempfile
import timeit

import torch
import transformers

from megatron_qwen.checkpointing.weights import save_weights_only
from megatron_qwen.config.recipes import PPO, REWARD
from megatron_qwen.data.prompts import read_prompts
from megatron_qwen.hf.random_model import TINY_EXPORT_MODEL, write_random_hf
from megatron_qwen.inference.generate import Sampling
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.entry import main as run_job
from megatron_qwen.training.ppo_models import build_ppo_models, load_frozen, start_weights
from megatron_qwen.training.ppo_rollout import sample_responses

PROMPTS = ["Write a short poem about the sea.", "Explain what a KV cache is.", "List three prime numbers.",
           "Say hello in French.", "What is the capital of Japan?", "Give me a recipe for tea.",
           "Describe a cat.", "Count from one to five."]


def write_models(root: str) -> tuple[str, str]:
    """(the policy's export, the reward model's --save directory), random weights of one shape."""
    policy = os.path.join(root, "policy")
    write_random_hf(policy, TINY_EXPORT_MODEL, "qwen2")
    cfg = parse_run_config(REWARD, ["--load", policy, "--mock-data", "--train-iters", "1"])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    save_weights_only(os.path.join(root, "reward"), 0, model, cfg, "random", "random")
    destroy_distributed()
    return policy, os.path.join(root, "reward")


def best_seconds(decode, rounds: int) -> float:
    """The fastest of ``rounds`` calls, after one warm-up call (first calls pay for allocations)."""
    decode()
    return min(timeit.repeat(decode, number=1, repeat=rounds))


def rollout_seconds(argv: list[str], rounds: int, new_tokens: int):
    """(best seconds, prompts) of the PPO job's rollout decoding of one batch."""
    cfg = parse_run_config(PPO, argv)
    prompts = read_prompts(cfg.ppo.prompt_data_path, load_tokenizer(), cfg.train.seq_length, new_tokens)
    batch = [p for p in prompts[:cfg.train.global_batch_size // 2] for _ in range(2)]
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    models = build_ppo_models(cfg)
    load_frozen(cfg, models)
    start_weights(cfg, models)
    sampling = Sampling(top_p=0.9, seed=0)
    seconds = best_seconds(lambda: sample_responses(models.policy.model[0], batch, new_tokens, set(),
                                                       cfg.model.vocab_size, sampling), rounds)
    destroy_distributed()
    return seconds, batch


def transformers_seconds(export: str, batch: list[list[int]], new_tokens: int, rounds: int) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    pad = 151_643  # <|endoftext|>; the mask keeps it out of attention
    rows = [torch.tensor(p) for p in batch]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad, padding_side="left")
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_side="left")

    def decode():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.9, top_k=0, temperature=1.0,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)

    return best_seconds(decode, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=16, help="rows of the batch (two per prompt)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=3, help="PPO iterations for the time split")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench_ppo_")
    policy, reward = write_models(root)
    prompts = os.path.join(root, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.writelines(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)] + f" ({i})"}) + "\n"
                     for i in range(a.responses // 2))
    argv = ["--load", policy, "--reward-model", reward, "--prompt-data-path", prompts, "--seq-length", "256",
            "--max-new-tokens", str(a.new_tokens), "--global-batch-size", str(a.responses), "--micro-batch-size", "2"]
    ours, batch = rollout_seconds(argv, a.rounds, a.new_tokens)
    theirs = transformers_seconds(policy, batch, a.new_tokens, a.rounds)
    last = run_job(PPO, [*argv, "--train-iters", str(a.iterations), "--value-warmup-iters", "1"])
    tokens = len(batch) * a.new_tokens
    figures = {"responses": len(batch), "new_tokens": a.new_tokens, "rollout_tokens_per_s": tokens / ours,
               "transformers_tokens_per_s": tokens / theirs, "job_rollout_tokens_per_s": last["rollout_tokens_per_sec"],
               "rollout_share": last["rollout_share"], "rollout_s": last["rollout_seconds"],
               "training_s": last["training_seconds"]}
    print(json.dumps(figures))
    print(f"rollout decoding (PPO's): {figures['rollout_tokens_per_s']:.0f} tokens/s | transformers generate: "
          f"{figures['transformers_tokens_per_s']:.0f} tokens/s | ratio {theirs / ours:.2f}x")
    print(f"PPO iteration {a.iterations}: rollout {figures['rollout_s']:.2f} s "
          f"({100 * figures['rollout_share']:.0f}%), training {figures['training_s']:.2f} s; the job's rollout "
          f"tokens/s {figures['job_rollout_tokens_per_s']:.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
