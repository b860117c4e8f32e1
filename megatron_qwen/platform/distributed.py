"""Process groups: torch.distributed (nccl on GPU, gloo on CPU) and megatron-core's TP/PP/CP/DP groups."""

from __future__ import annotations

import os
import random
import socket
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_qwen.platform import cpu_shim


def on_gpu() -> bool:
    return torch.cuda.is_available()


def compute_device() -> torch.device:
    """This rank's device: its GPU (set from LOCAL_RANK by init_distributed), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")


def init_distributed(parallel, num_layers: int, seed: int) -> None:
    """Join the job launched by torchrun (or run as a single process) and build the groups. ``parallel`` is
    the run's ParallelSettings (config/parallel.py), read for its sizes only: this layer sits below config."""
    cpu_shim.install_if_needed()
    if not dist.is_initialized():
        if on_gpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if on_gpu() else "gloo"
        timeout = timedelta(minutes=parallel.distributed_timeout_minutes)
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:  # launched by torchrun/srun
            dist.init_process_group(backend=backend, timeout=timeout)
        else:  # a lone process: a private rendezvous, leaving the environment untouched
            dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    rank=0, world_size=1, timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_size(num_layers),
            context_parallel_size=parallel.context_parallel_size,
            distributed_timeout_minutes=parallel.distributed_timeout_minutes,
        )
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    """Seed python-side RNGs and megatron-core's tracker (dropout inside TP regions differs per
    TP rank, outside it is shared), offset by pipeline stage as Megatron-LM does."""
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def destroy_distributed() -> None:
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
