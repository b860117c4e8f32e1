"""Each rank's random number generators, as a checkpoint keeps them: python, numpy, torch (and CUDA), and
megatron-core's tensor-parallel tracker, so a resume draws what the uninterrupted run would have."""

import random

import numpy as np
import torch
from megatron.core import tensor_parallel


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
