"""What a checkpoint takes from the running job: the layout of its process groups, and each rank's RNG
states (run_state.py holds the records that need neither torch nor process groups)."""

import random

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_qwen.checkpointing.run_state import layout


def current_layout() -> dict:
    """This job's layout record (run_state.layout; process groups built)."""
    return layout(parallel_state.get_tensor_model_parallel_world_size(),
                  parallel_state.get_pipeline_model_parallel_world_size(),
                  parallel_state.get_data_parallel_world_size(), parallel_state.get_context_parallel_world_size())


def rng_states() -> dict:
    """This rank's RNG states: python, numpy, torch (and CUDA), and megatron-core's tracker."""
    return {
        "random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_states(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
