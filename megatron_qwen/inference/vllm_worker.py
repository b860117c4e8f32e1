"""Greedy generation with vLLM's offline `LLM` (CPU build): the worker that megatron_qwen/inference/vllm_client.py
starts for tools/check_vllm.py and bench/bench_generate_engines.py.

Runs as a script with the python of the vLLM environment (tools/vllm_env.sh), not the project's: vLLM pins
another transformers. Imports nothing of this repository (nor does the package start it through).

    .venv-vllm/bin/python megatron_qwen/inference/vllm_worker.py --model hf/qwen2-export --prompt "1 + 2 ="

Prints one JSON object: {"ids": [[...] per prompt], "seconds": wall time of the generate call (the last round),
"prompt_ids": [[...] per prompt as vLLM tokenized it], "rounds": [...]}. Generation stops where the model's
generation_config.json says, or with --ignore-eos only at --max-new-tokens (every prompt gives that many ids).
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a Hugging Face model directory (our qwen2 export)")
    p.add_argument("--prompt", action="append", required=True, help="a text prompt; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="float32", help="vLLM's dtype (float32: ids comparable to an fp32 reference)")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens (benchmarks)")
    p.add_argument("--rounds", type=int, default=1, help="generate this many times (timing); ids of the last")
    p.add_argument("--kv-cache-gib", default="1", help="VLLM_CPU_KVCACHE_SPACE (vLLM's default 4 GiB is not needed)")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)

    # after VLLM_CPU_KVCACHE_SPACE is set, which vLLM reads
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, seed=0, max_model_len=512, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos)
    rounds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        outputs = llm.generate(args.prompt, params, use_tqdm=False)
        rounds.append(time.perf_counter() - start)
    ids = [list(out.outputs[0].token_ids) for out in outputs]
    print(json.dumps({"ids": ids, "prompt_ids": [list(out.prompt_token_ids) for out in outputs],
                      "seconds": rounds[-1], "rounds": rounds}), flush=True)


if __name__ == "__main__":
    main()
