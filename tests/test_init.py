"""Layout-independent initialization (model/init.py): the CPU draws are the ones every CPU run,
test and checkpoint of this project was made with, and every tensor-parallel rank's slice is its
part of the one full draw. The parity suite (tests/test_parity.py) checks the same on real layouts."""

import hashlib
import platform

import pytest
import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model
from megatron_qwen.model.init import rank_slice
from megatron_qwen.model.layout import global_param_names, unshard
from megatron_qwen.training.arguments import parse_run_config

# sha256 over (name, fp32 bytes) of every parameter of the tiny preset, recorded from model/init.py
# before the GPU path was added (torch 2.13 CPU build, x86-64).
RECORDED = {
    1234: "fc38eb1539b40925b88d379ef26d4fe6d198ec8a8070583d9c3ea84cf71ba24c",
    5: "1b07f0058b678a9db7da41dac8332714ce12b6e588350f4ad9e888bd5ae80bdc",
}


def tiny_model(seed: int):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--seed", str(seed)])
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    return cfg, model


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="recorded on x86-64: torch's vectorized CPU normal_ may round differently elsewhere")
@pytest.mark.parametrize("seed", sorted(RECORDED))
def test_cpu_draws_are_unchanged(single_process, seed):
    _, model = tiny_model(seed)
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(param.detach().contiguous().numpy().tobytes())
    assert h.hexdigest() == RECORDED[seed]


def _as_rank_shard(param, tp_size: int) -> torch.Tensor:
    """A stand-in for one rank's parameter at ``tp_size``: the shard's shape and megatron's TP attributes."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] //= tp_size
    fake = torch.empty(shape)
    for attr in ("tensor_model_parallel", "partition_dim"):
        if hasattr(param, attr):
            setattr(fake, attr, getattr(param, attr))
    return fake


@pytest.mark.parametrize("tp_size", [2, 4])
def test_rank_slices_rebuild_the_single_process_weights(single_process, tp_size):
    cfg, model = tiny_model(1234)
    names = global_param_names(model)
    split = 0
    for name, param in model.named_parameters():
        fake = _as_rank_shard(param, tp_size)
        slices = [rank_slice(fake, names[name], cfg.model, 1234, r, tp_size, torch.device("cpu"))
                  for r in range(tp_size)]
        dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        split += dim is not None
        assert all(s.shape == fake.shape for s in slices), name
        assert torch.equal(unshard(slices, names[name], dim), param.detach()), name
    assert split > 0  # the tiny model has tensor-parallel weights, so the check above sliced some


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU draw path needs CUDA")
def test_gpu_draws_are_layout_independent(single_process):
    cfg, model = tiny_model(1234)
    names = global_param_names(model)
    cuda = torch.device("cuda")
    for name, param in model.named_parameters():
        full = rank_slice(param, names[name], cfg.model, 1234, 0, 1, cuda)
        fake = _as_rank_shard(param, 2)
        dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        halves = [rank_slice(fake, names[name], cfg.model, 1234, r, 2, cuda) for r in range(2)]
        assert torch.equal(unshard(halves, names[name], dim), full), name
        cpu = param.detach()
        if cpu.std() == 0:  # norms and biases: constants
            assert torch.equal(full.cpu(), cpu), name
        else:  # another generator, the same distribution (thousands of draws: std within a few %)
            assert abs(full.std().item() / cpu.std().item() - 1) < 0.1, name
