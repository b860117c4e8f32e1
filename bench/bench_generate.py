"""Decoding speed: the KV cache (megatron_qwen/inference/generate.py) against the cache-free loop it replaced.

    python bench/bench_generate.py                    # tiny-qwen-vocab, 256 new tokens, best of 3 rounds
    python bench/bench_generate.py --model-size 1.8b --new-tokens 128 --rounds 1

One prompt of --prompt-tokens random ids, greedy, no stop ids, so both produce exactly --new-tokens
tokens; the model has random weights (decoding speed does not depend on them). The old loop reran
the whole sequence each step and computed the logits of every position; the cache runs the prompt
once, then one token per step. Prints new tokens per second of each (best of --rounds) and their
ratio, and whether both chose the same ids. Never fails on a timing.
"""

import argparse
import time

import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.inference import generate
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import init_distributed, on_gpu
from megatron_qwen.training.arguments import parse_run_config


@torch.no_grad()
def cache_free_greedy(model, prompt: list[int], max_new_tokens: int, vocab: int) -> list[int]:
    """The baseline: the greedy loop generate.py had before the KV cache, without its stop ids."""
    device = next(model.parameters()).device
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)
    generated = []
    for _ in range(max_new_tokens):
        positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
        next_id = int(model(tokens, positions, None)[0, -1][:vocab].argmax())
        generated.append(next_id)
        tokens = torch.cat([tokens, tokens.new_tensor([[next_id]])], dim=1)
    return generated


def best_rate(name: str, decode, new_tokens: int, rounds: int) -> tuple[float, list[int]]:
    """(new tokens per second of the fastest round, the ids decoded); each round is printed as it ends."""
    best = float("inf")
    for i in range(rounds):
        if on_gpu():
            torch.cuda.synchronize()
        start = time.perf_counter()
        ids = decode()
        if on_gpu():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"  {name} round {i + 1}: {seconds:.2f} s, {new_tokens / seconds:.1f} tokens/s", flush=True)
        best = min(best, seconds)
    return new_tokens / best, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="tiny-qwen-vocab")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", args.model_size])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    model = (model.cuda() if on_gpu() else model).eval()
    vocab = cfg.model.vocab_size
    prompt = torch.randint(0, vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    # Warm-up: first calls pay for allocations (and on a GPU, kernel selection).
    generate(model, [prompt], 4, (), vocab_size=vocab)
    cache_free_greedy(model, prompt, 4, vocab)

    device = torch.cuda.get_device_name() if on_gpu() else f"CPU, torch threads: {torch.get_num_threads()}"
    print(f"{args.model_size}, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, "
          f"best of {args.rounds} rounds ({device})", flush=True)
    cached, cached_ids = best_rate("KV cache", lambda: generate(model, [prompt], args.new_tokens, (),
                                                                vocab_size=vocab)[0], args.new_tokens, args.rounds)
    old, old_ids = best_rate("cache-free loop", lambda: cache_free_greedy(model, prompt, args.new_tokens, vocab),
                             args.new_tokens, args.rounds)
    print(f"  KV cache (generate)   {cached:9.1f} tokens/s")
    print(f"  cache-free loop (old) {old:9.1f} tokens/s")
    print(f"  speed-up {cached / old:.1f}x; same ids: {'yes' if cached_ids == old_ids else 'no'}")


if __name__ == "__main__":
    main()
