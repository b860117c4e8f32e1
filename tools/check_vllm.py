"""vLLM serves our qwen2 export as it is: its greedy ids equal tools/generate.py's and transformers'.

    bash tools/vllm_env.sh                 # once: vLLM's CPU build in its own environment (.venv-vllm)
    python tools/check_vllm.py             # a tiny random export, checked; exit 0 when all three agree
    python tools/check_vllm.py --export hf/qwen2-export --load runs/7b/ckpt --vllm-python /opt/vllm/bin/python

Without --export, a tiny random qwen2-layout model (megatron_qwen/hf/random_model.py: the published 151,936
vocabulary rows, head dim 64, as vLLM's CPU attention takes no head dim under 32) is converted into a
checkpoint of ours and exported back with tools/convert_checkpoint.py --hf-layout qwen2: the directory vLLM
loads is the one our converter writes, tokenizer and generation config included. For each prompt (English,
Chinese, code):
- vLLM's `LLM` (offline, CPU, fp32) reads the prompt text with the export's tokenizer.json and decodes greedily,
  stopping where the export's generation_config.json says (megatron_qwen/inference/vllm_client.py, in vLLM's
  environment);
- tools/generate.py --greedy --json on the checkpoint of ours the export was written from (--load; default:
  the export itself), in this environment, so a fault of the export shows as a difference;
- transformers' `generate` on the same weights, fed the ids of our tokenizer (tiktoken on qwen.tiktoken).
The prompt ids vLLM tokenized and the new ids of all three must be equal. Runs in a few minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.hf.random_model import TINY_EXPORT_MODEL, write_random_hf
from megatron_qwen.inference.vllm_client import vllm_generate, vllm_python
from megatron_qwen.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["The capital of France is", "你好，世界！今天我们", "def fib(n):\n    if n < 2:\n        return n\n"]
STOP_IDS = (151_643, 151_645)  # <|endoftext|>, <|im_end|>: where tools/generate.py stops


def run_tool(cmd: list[str], what: str, timeout: int = 900) -> str:
    """stdout of a command of this repository; a failure ends the check with the command's last output."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"check_vllm: {what} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return proc.stdout


def build_tiny_export(root: str) -> tuple[str, str]:
    """root/src (random, qwen2 layout) -> root/ours (our checkpoint) -> root/export (our qwen2 export); returns
    the last two."""
    write_random_hf(os.path.join(root, "src"), TINY_EXPORT_MODEL, "qwen2")
    tool = os.path.join("tools", "convert_checkpoint.py")
    for src, dst, extra in (("src", "ours", []), ("ours", "export", ["--hf-layout", "qwen2"])):
        run_tool([sys.executable, tool, "--load-dir", os.path.join(root, src), "--save-dir", os.path.join(root, dst),
                  *extra], f"convert_checkpoint.py {src} -> {dst}")
    return os.path.join(root, "ours"), os.path.join(root, "export")


def ours_generate(load: str, prompts: list[str], new_tokens: int) -> list[list[int]]:
    out = run_tool([sys.executable, os.path.join("tools", "generate.py"), "--load", load, "--greedy", "--json",
                    "--max-new-tokens", str(new_tokens), *[a for p in prompts for a in ("--prompt", p)]],
                   "tools/generate.py")
    return [json.loads(line)["ids"] for line in out.splitlines()]


def transformers_greedy(export: str, prompt_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, cut before the first stop id."""
    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    result = []
    for ids in prompt_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=new_tokens)
        new = out[0, len(ids):].tolist()
        result.append(next((new[:i] for i, t in enumerate(new) if t in STOP_IDS), new))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", default=None, help="a qwen2 export to check (default: build a tiny random one)")
    p.add_argument("--load", default=None, help="with --export: the checkpoint of ours it was exported from")
    p.add_argument("--vllm-python", default=None,
                   help="the python of vLLM's environment (default: $VLLM_PYTHON, else .venv-vllm/bin/python)")
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="check_vllm_") as root:
        load, export = (args.load or args.export, args.export) if args.export else build_tiny_export(root)
        try:
            vllm = vllm_generate(vllm_python(args.vllm_python), export, PROMPTS, args.new_tokens)
        except (ConfigError, RuntimeError) as e:
            sys.exit(f"check_vllm: {e}")
        ours = ours_generate(load, PROMPTS, args.new_tokens)
        prompt_ids = [load_tokenizer().tokenize(text) for text in PROMPTS]
        reference = transformers_greedy(export, prompt_ids, args.new_tokens)
    ok = True
    for i, text in enumerate(PROMPTS):
        same = vllm["prompt_ids"][i] == prompt_ids[i] and vllm["ids"][i] == ours[i] == reference[i]
        ok &= same
        print(f"{'same' if same else 'DIFFERENT'}: {text!r}\n  vLLM         {vllm['ids'][i]}\n"
              f"  generate.py  {ours[i]}\n  transformers {reference[i]}")
        if vllm["prompt_ids"][i] != prompt_ids[i]:
            print(f"  prompt ids: vLLM {vllm['prompt_ids'][i]}, ours {prompt_ids[i]}")
    print("vLLM serves the export: greedy ids equal ours and transformers'" if ok else
          "check_vllm: vLLM's ids differ from ours (above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
