"""Generation speed of our decoding loop against the engines users serve with, on the same export.

    bash tools/vllm_env.sh                                  # once: vLLM's CPU build in .venv-vllm
    python bench/bench_generate_engines.py                  # tiny random export, 128 new tokens, best of 3
    python bench/bench_generate_engines.py --export hf/qwen2-export --new-tokens 64 --prompt "Hello" --prompt "你好"

One qwen2 export (default: the tiny random model tools/check_vllm.py checks, megatron_qwen/hf/random_model.py:
2 layers, hidden 128, head dim 64, the published 151,936 vocabulary rows, made a self-contained export by our
converter), the same prompts (one batch), the same number of new
tokens, greedy, no stop ids (each engine produces exactly --new-tokens per prompt), timed around the generate
call only (the model already loaded, one warm-up call first), best of --rounds:
- generate.py: megatron_qwen.inference.generate, the loop tools/generate.py runs (KV cache), in this process;
- transformers: AutoModelForCausalLM.generate on the export (its KV cache), in this process;
- vLLM: LLM.generate of vLLM's CPU build, in its own environment (a subprocess; megatron_qwen/inference/vllm_client.py)
  with its own CPU settings (it reserves a core for its scheduler; fp32 like the others).
Prints the JSON, then one line per engine: new tokens per second over all prompts, and whether the three
produced the same ids. Never fails on a timing.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import transformers

from megatron_qwen.hf.random_model import TINY_EXPORT_MODEL, write_random_hf
from megatron_qwen.hf.relayout import relayout_hf
from megatron_qwen.inference import generate, load_model_for_inference
from megatron_qwen.inference.vllm_client import vllm_generate, vllm_python
from megatron_qwen.platform.notices import silence_megatron_notices
from megatron_qwen.tokenizer import load_tokenizer

PROMPTS = ["The capital of France is", "def fib(n):"]


def best_seconds(decode, rounds: int) -> tuple[float, list[list[int]]]:
    decode()  # warm-up: first calls pay for allocations
    best, ids = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        ids = decode()
        best = min(best, time.perf_counter() - start)
    return best, ids


def ours(export: str, prompts: list[list[int]], new_tokens: int, rounds: int) -> tuple[float, list[list[int]]]:
    model = load_model_for_inference(export)
    return best_seconds(lambda: generate(model, prompts, new_tokens, ()), rounds)


def transformers_generate(export: str, prompts: list[list[int]], new_tokens: int,
                          rounds: int) -> tuple[float, list[list[int]]]:
    """A left-padded batch (transformers' way for decoder-only models); min_new_tokens keeps it from stopping."""
    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    width = max(map(len, prompts))
    pad = 151_643
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def decode():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=pad)
        return out[:, width:].tolist()

    return best_seconds(decode, rounds)


def tiny_export(root: str) -> str:
    """The tiny random model, written as a qwen2 directory and made a self-contained export (tokenizer and
    generation files) by the direct conversion."""
    write_random_hf(os.path.join(root, "src"), TINY_EXPORT_MODEL, "qwen2")
    relayout_hf(os.path.join(root, "src"), os.path.join(root, "export"), "qwen2")
    return os.path.join(root, "export")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", default=None, help="a qwen2 export (default: build the tiny random one)")
    p.add_argument("--prompt", action="append", default=None, help=f"a prompt; repeat for a batch ({PROMPTS})")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--vllm-python", default=None, help="vLLM's python (default: $VLLM_PYTHON, else .venv-vllm)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    texts = args.prompt or PROMPTS

    silence_megatron_notices()
    prompts = [load_tokenizer().tokenize(t) for t in texts]
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as root:
        export = args.export or tiny_export(root)
        seconds, ids = {}, {}
        seconds["generate.py"], ids["generate.py"] = ours(export, prompts, args.new_tokens, args.rounds)
        seconds["transformers"], ids["transformers"] = transformers_generate(export, prompts, args.new_tokens,
                                                                             args.rounds)
        # vLLM's rounds: the first is its warm-up, as above.
        vllm = vllm_generate(vllm_python(args.vllm_python), export, texts, args.new_tokens, ignore_eos=True,
                             rounds=args.rounds + 1)
        seconds["vLLM"], ids["vLLM"] = min(vllm["rounds"][1:]), vllm["ids"]
    total = args.new_tokens * len(prompts)
    result = {"export": args.export or "tiny random (2 layers, hidden 128, head dim 64, 151,936 rows)",
              "prompts": texts, "prompt_tokens": [len(x) for x in prompts], "new_tokens": args.new_tokens,
              "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[0],  # other work on the machine skews every figure
              "tokens_per_s": {name: total / s for name, s in seconds.items()},
              "same_ids": ids["generate.py"] == ids["transformers"] == ids["vLLM"]}
    print(json.dumps(result, ensure_ascii=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
    print(f"{len(prompts)} prompt(s) of {result['prompt_tokens']} tokens, {args.new_tokens} new tokens each, greedy, "
          f"best of {args.rounds} (CPU, torch threads here: {result['torch_threads']}, load average "
          f"{result['load_average']:.1f})")
    for name, rate in result["tokens_per_s"].items():
        print(f"  {name:<13} {rate:9.1f} new tokens/s")
    print(f"  same ids: {'yes' if result['same_ids'] else 'no'}")


if __name__ == "__main__":
    main()
