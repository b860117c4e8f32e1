"""vLLM's offline engine on a Hugging Face directory, run in vLLM's own environment (its CPU build pins
another transformers; tools/vllm_env.sh builds the environment): vllm_worker.py started with that
environment's python, its JSON read back. For tools/check_vllm.py and bench/bench_generate_engines.py.

Not named vllm.py: vllm_worker.py runs as a script from this folder, where such a module would shadow vLLM."""

import json
import os
import subprocess

from megatron_qwen.config.errors import ConfigError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_worker.py")
# Where `bash tools/vllm_env.sh` builds the environment by default: .venv-vllm in the repository.
DEFAULT_VLLM_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(WORKER))), ".venv-vllm", "bin",
                                   "python")


def vllm_python(flag_value: str | None = None) -> str:
    """The python of vLLM's environment: the flag's, else $VLLM_PYTHON, else the default place."""
    return flag_value or os.environ.get("VLLM_PYTHON") or DEFAULT_VLLM_PYTHON


def vllm_generate(python: str, model_dir: str, prompts: list[str], new_tokens: int, ignore_eos: bool = False,
                  rounds: int = 1) -> dict:
    """vllm_worker.py's JSON for greedy generation from ``prompts`` (texts): {"ids", "prompt_ids", "seconds",
    "rounds"}. It stops where the directory's generation_config.json says, or with ``ignore_eos`` only at
    ``new_tokens``."""
    if not os.path.isfile(python):
        raise ConfigError(f"--vllm-python {python} does not exist; build vLLM's environment first: "
                          "bash tools/vllm_env.sh")
    cmd = [python, WORKER, "--model", model_dir, "--max-new-tokens", str(new_tokens), "--rounds", str(rounds),
           *(["--ignore-eos"] if ignore_eos else []), *[a for p in prompts for a in ("--prompt", p)]]
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith('{"ids"')))
