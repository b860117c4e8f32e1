"""Write the full (TP1) weights of the latest checkpoint under a --save directory to a .pt file,
keyed by megatron-core's global parameter names (what megatron_qwen.hf.layouts.to_hf_state_dict reads).

Usage: python tests/sft_checkpoint_weights.py SAVE_DIR OUT.pt

A separate process because load_model_for_inference sets up torch.distributed and megatron-core's
parallel state, which must not leak into the pytest process.
"""

import sys

import torch

from megatron_qwen.inference.generate import load_model_for_inference


def main(save_dir: str, out: str) -> None:
    model = load_model_for_inference(save_dir)
    state = {name: t.detach().float().cpu().clone() for name, t in model.state_dict().items()
             if not name.endswith("_extra_state")}
    torch.save(state, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
