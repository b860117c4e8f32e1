"""The benchmarks and the GPU check stay runnable on the CPU: bench/bench_train.py prints every
figure, bench/gpu/report.py turns stage results into results.md, and the spec's fp32 RoPE (which the
check's correctness stage measures) rotates exactly as Qwen does. The whole GPU check's CPU dry run
takes minutes here, so it is a documented command (docs/PERFORMANCE.md), not a test."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env

from megatron_qwen.config.arguments import parse_run_config
from megatron_qwen.config.parallel import ParallelConfig
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model
from megatron_qwen.model.rope import UpcastForRope
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed

FIGURES = ("step time (median):", "tokens/s/GPU:", "TFLOP/s/GPU:", "MFU:", "peak memory:", "torch.compile:",
           "step breakdown")
PARTS = ("forward", "backward", "communication", "optimizer", "other")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    proc = subprocess.run([sys.executable, "bench/bench_train.py", "--warmup", "1", "--iters", "1", "--model-size",
                           "tiny", "--seq-length", "64", "--micro-batch-size", "2", "--json", str(out)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_bench_train_prints_every_figure(bench_run):
    stdout, result = bench_run
    for figure in FIGURES:
        assert figure in stdout, figure
    breakdown_line = next(line for line in stdout.splitlines() if line.startswith("step breakdown"))
    assert all(part in breakdown_line for part in PARTS)
    assert set(result["breakdown_s"]) == set(PARTS)
    assert all(result["breakdown_s"][part] > 0 for part in ("forward", "backward", "optimizer"))
    assert result["iters"] == 1 and len(result["losses"]) == 2


def test_compiled_layers_keep_less_for_the_backward(tmp_path):
    """bench/bench_activations.py on the tiny shape: eager and compiled layers keep what the planner estimates
    for each (the planner's own tolerance, tests/test_plan.py), and the compiled layer keeps less."""
    out = tmp_path / "activations.json"
    proc = subprocess.run([sys.executable, "bench/bench_activations.py", "--model-size", "tiny", "--num-layers", "2",
                           "--json", str(out)], cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for kind in ("eager", "compiled"):
        assert abs(r[f"{kind}_bytes_per_token"] / r[f"planner_{kind}_bytes_per_token"] - 1) <= 0.15, r
    assert 0 < r["compiled_bytes_per_token"] < r["eager_bytes_per_token"], r


def test_bench_train_refuses_a_bad_flag_in_one_line():
    proc = subprocess.run([sys.executable, "bench/bench_train.py", "--model-size", "tiny", "--seq-length", "4096"],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --seq-length 4096 exceeds --max-position-embeddings 512; raise --max-position-embeddings or "
        "shorten --seq-length"], proc.stderr[-2000:]


def test_report_writes_results_md(bench_run, tmp_path):
    """report.py on a stage directory where one throughput run exists and every other stage failed."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "throughput_1.8b.json").write_text(json.dumps(bench_run[1]))
    (work / "stages.tsv").write_text("throughput: 1.8B\tok\t3\ncorrectness: device\tfailed (exit 1)\t5\n")
    subprocess.run([sys.executable, "bench/gpu/report.py", str(work), str(out), "cpu-dry-run", "test"], cwd=REPO,
                   env=quiet_env(), check=True, timeout=120)
    md = (out / "results.md").read_text()
    assert "| Qwen-1.8B shape | 4 x 64 (176) | 64 |" in md
    assert "not measured" in md and "failed (exit 1)" in md
    assert json.loads((out / "results.json").read_text())["throughput"]["1.8b"]["seq_length"] == 64


def test_gpu_check_refuses_bad_arguments():
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.fixture
def single_process():
    init_distributed(ParallelConfig(), 1, seed=0)
    yield
    destroy_distributed()


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_bf16_rope_rotates_in_fp32_as_qwen(single_process, backend):
    """In the bf16 model the attention gets Qwen's rotation: q and k rotated in fp32, rounded once."""
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--bf16", "--transformer-impl", backend])
    (model,) = build_model(cfg)
    attention = model.decoder.layers[0].self_attention
    assert isinstance(attention.q_layernorm, UpcastForRope) and isinstance(attention.k_layernorm, UpcastForRope)
    seen = {}
    attention.q_layernorm.register_forward_hook(lambda m, args, out: seen.update(before=out))
    attention.core_attention.inner.register_forward_pre_hook(lambda m, args: seen.update(after=args[0]))
    seq = 48
    tokens = torch.randint(0, 1024, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens, torch.arange(seq).unsqueeze(0), None)
        freqs = model.rotary_pos_emb(seq)  # [seq, 1, 1, head_dim], fp32
    before, after = seen["before"], seen["after"]
    assert before.dtype == torch.float32 and after.dtype == torch.bfloat16
    qwen = (before * freqs.cos() + _rotate_half(before) * freqs.sin()).to(torch.bfloat16)
    assert torch.equal(after, qwen)
    in_bf16 = before.bfloat16()
    stock = in_bf16 * freqs.cos().bfloat16() + _rotate_half(in_bf16) * freqs.sin().bfloat16()
    assert not torch.equal(stock, qwen)  # megatron-core's bf16 rotation is a different number


def test_fp32_rope_slots_are_identity_in_fp32():
    x = torch.randn(4, 2, 3, 8)
    assert UpcastForRope()(x) is x  # no copy, no op recorded: fp32 runs are bit-identical


def test_bench_scripts_are_executable():
    for script in ("bench/gpu_check.sh", "bench/gpu/fetch_wheels.sh"):
        assert os.access(os.path.join(REPO, script), os.X_OK), script
