"""What a GPU machine decides at start, checked on the CPU by pretending the GPU's libraries are there: the back end
--transformer-impl auto picks, what preflight refuses about a back end (one line, exit 2), and the weight-gradient
fusion the DeepSpeed engine must never get."""

import pytest
import torch
from conftest import run_module
from megatron.core.tensor_parallel import layers

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN, SFT
from megatron_qwen.model import builder
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform import backends
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.preflight import check_backend

TINY = ["--mock-data", "--model-size", "tiny"]


@pytest.fixture
def gpu_with(monkeypatch):
    """A GPU machine with the given packages installed, as platform/backends.py sees it."""

    def install(*packages: str):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: name if name in packages else None)

    return install


@pytest.mark.parametrize("installed, precision, picked", [
    (("transformer_engine", "flash_attn"), "fp32", "te"),
    (("flash_attn",), "bf16", "flash"),
    (("flash_attn",), "fp32", "sdpa"),  # flash-attn has no fp32 kernels
    ((), "bf16", "sdpa"),
])
def test_auto_picks_a_back_end_that_runs_the_precision(gpu_with, installed, precision, picked):
    gpu_with(*installed)
    cfg = parse_run_config(PRETRAIN, [*TINY, *(["--bf16"] if precision == "bf16" else [])])
    assert (cfg.build.transformer_impl, cfg.build.precision) == (picked, precision)


def sft(*flags: str):
    return parse_run_config(SFT, ["--model-size", "tiny", "--data-path", "x", "--no-finetune", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--transformer-impl", "flash"],
     "--transformer-impl flash runs in bf16 only (flash-attn has no fp32 kernels): add --bf16, or pass "
     "--transformer-impl sdpa for fp32"),
    (["--transformer-impl", "transformer_engine", "--bf16", "--context-parallel-size", "2"],
     "--transformer-impl te cannot keep packed SFT conversations apart under --context-parallel-size 2 (a packed "
     "sample would be split across ranks mid-conversation): pass --no-pack-sft, or --context-parallel-size 1"),
])
def test_preflight_refuses_what_the_back_end_cannot_do(flags, message):
    with pytest.raises(ConfigError) as e:
        check_backend(sft(*flags))
    assert str(e.value) == message and "\n" not in message


@pytest.mark.parametrize("flags", [
    ["--transformer-impl", "flash", "--bf16"],  # packed, as THD rows through the varlen kernel
    ["--transformer-impl", "transformer_engine", "--bf16"],
    ["--transformer-impl", "transformer_engine", "--bf16", "--context-parallel-size", "2", "--no-pack-sft"],
    ["--transformer-impl", "sdpa"], ["--transformer-impl", "local"],
])
def test_preflight_accepts_packed_and_padded_sft_where_they_run(flags):
    cfg = sft(*flags)
    assert cfg.data.pack_sft == ("--no-pack-sft" not in flags)
    check_backend(cfg)


def test_the_entry_point_refuses_in_one_line(tmp_path):
    proc = run_module("megatron_qwen.sft", ["--model-size", "tiny", "--seq-length", "64", "--no-finetune",
                                            "--data-path", str(tmp_path / "x"), "--transformer-impl", "flash"],
                      timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --transformer-impl flash runs in bf16 only (flash-attn has no fp32 kernels): add --bf16, or pass "
        "--transformer-impl sdpa for fp32"], proc.stderr[-2000:]


def test_deepspeed_engine_never_fuses_weight_gradients(single_process, monkeypatch):
    """Where apex's fused weight-gradient kernel imports (pretended: a GPU, the kernel, megatron-core's check of it),
    the megatron engine's model accumulates weight gradients into its DDP's main_grad through it; the DeepSpeed
    engine's model, which has no main_grad, does not, and its backward runs (with the fusion it fails there)."""
    monkeypatch.setattr(builder, "on_gpu", lambda: True)
    monkeypatch.setattr(builder, "_installed", lambda *modules: True)
    monkeypatch.setattr(layers, "_grad_accum_fusion_available", True)
    others_off = ["--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--no-masked-softmax-fusion",
                  "--no-rmsnorm-fusion", "--no-cross-entropy-fusion"]  # compiled or CUDA kernels: not here

    def linears(*flags):
        cfg = parse_run_config(PRETRAIN, [*TINY, *others_off, *flags])
        (chunk,) = build_model(cfg.model, cfg.parallel, cfg.build, megatron_ddp=not cfg.zero.deepspeed)
        found = [m for m in chunk.modules() if hasattr(m, "gradient_accumulation_fusion")]
        assert found
        return chunk, [m.gradient_accumulation_fusion for m in found]

    _, megatron_engine = linears()
    assert all(megatron_engine)
    chunk, deepspeed_engine = linears("--zero-engine", "deepspeed", "--zero-stage", "1")
    assert not any(deepspeed_engine)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    chunk(tokens, positions, None, labels=tokens).sum().backward()
    assert all(p.grad is not None for p in chunk.parameters())
