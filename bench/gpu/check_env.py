"""Environment stage of bench/gpu_check.sh: versions, the GPU, and which layer back ends import.

    python bench/gpu/check_env.py OUT.json
"""

import importlib
import json
import platform
import shutil
import subprocess
import sys

import torch

from megatron_qwen.model.flops import peak_tflops
from megatron_qwen.platform.backends import available_backend


def _version(module: str) -> str | None:
    """The module's version if it imports, else None (an import error is an answer, not a failure)."""
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "installed"))


def main() -> int:
    env = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "megatron_core": _version("megatron.core"),
        "transformer_engine": _version("transformer_engine"), "flash_attn": _version("flash_attn"),
        "apex": _version("apex"), "triton": _version("triton"),
        "auto_backend": available_backend("bf16"), "auto_backend_fp32": available_backend("fp32"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_count=torch.cuda.device_count(), multiprocessors=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                   peak_bf16_tflops=peak_tflops(props.name))
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=driver_version,clocks.max.sm,power.limit"
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    for k, v in env.items():
        print(f"{k}: {v}")
    with open(sys.argv[1], "w") as f:
        json.dump(env, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
