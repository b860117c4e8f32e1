"""The benchmarks and the GPU check stay runnable on the CPU: bench/bench_train.py prints every
figure and derives them as docs/PERFORMANCE.md says, bench/bench_activations.py measures what a layer
keeps, and bench/gpu/report.py turns stage results into results.md. The whole GPU check's CPU dry run
takes minutes here, so it is a documented command (docs/PERFORMANCE.md), not a test."""

import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import REPO, quiet_env

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.training.arguments import parse_run_config

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


def test_bench_train_figures_follow_from_its_timing(bench_run):
    """Throughput, TFLOP/s and the model's FLOPs per token, recomputed here from the step time and the tiny
    preset's shape (the formula of model/flops.py written out: 6 x [L (4h^2 + 3hf + 2sh) + hV])."""
    stdout, r = bench_run
    m = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny"]).model
    h, f, layers, vocab_rows, seq = m.hidden_size, m.ffn_hidden_size, m.num_layers, m.padded_vocab_size, 64
    assert (r["num_layers"], r["hidden_size"], r["ffn_hidden_size"], r["vocab_rows"], r["seq_length"]) == \
        (layers, h, f, vocab_rows, seq)
    assert (r["micro_batch_size"], r["world_size"]) == (2, 1)
    flops_per_token = 6 * (layers * (4 * h * h + 3 * h * f + 2 * seq * h) + h * vocab_rows)
    assert r["gflop_per_token"] == pytest.approx(flops_per_token / 1e9, rel=1e-12)
    assert r["step_s"] == statistics.median(r["step_s_all"]) and len(r["step_s_all"]) == 1
    tokens_per_s = r["global_batch_size"] * seq / r["step_s"]
    assert r["tokens_per_s_per_gpu"] == pytest.approx(tokens_per_s, rel=1e-12)
    assert r["tflops_per_gpu"] == pytest.approx(tokens_per_s * flops_per_token / 1e12, rel=1e-12)
    assert r["peak_tflops"] is None and r["mfu"] is None  # no datasheet peak for a CPU
    assert f"tokens/s/GPU: {tokens_per_s:,.1f}" in stdout
    # A random model on random tokens starts near the uniform loss, ln(vocabulary rows).
    assert abs(r["losses"][0] - math.log(vocab_rows)) < 0.05 * math.log(vocab_rows), r["losses"]


def test_compiled_layers_keep_less_for_the_backward(tmp_path):
    """bench/bench_activations.py on the tiny shape: eager and compiled layers keep what the planner estimates
    for each (the planner's own tolerance, tests/test_memory.py), and the compiled layer keeps less."""
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
    (line,) = proc.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: --seq-length 4096 ") and "--max-position-embeddings 512" in line, line


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
    run = bench_run[1]
    assert f"| Qwen-1.8B shape | 4 x 64 (176) | 64 | 2 / 2 | local fp32 | none | {run['step_s'] * 1e3:.1f} | " \
           f"{run['tokens_per_s_per_gpu']:,.0f} | {run['tflops_per_gpu']:.1f} |" in md, md
    assert "not measured" in md and "| correctness: device | failed (exit 1) | 5 |" in md
    results = json.loads((out / "results.json").read_text())
    assert results["throughput"]["1.8b"] == run  # the stage's figures carried over whole
    assert results["stages"] == [{"stage": "throughput: 1.8B", "status": "ok", "seconds": 3},
                                 {"stage": "correctness: device", "status": "failed (exit 1)", "seconds": 5}]
    assert results["mode"] == "cpu-dry-run" and results["command"] == "test"


@pytest.mark.parametrize("args", [[], ["--cpu-dry-run"], ["OUT", "--budget", "soon"], ["OUT", "--wheels"],
                                  ["OUT", "--no-such-flag"]])
def test_gpu_check_refuses_bad_arguments_with_its_usage(args, tmp_path):
    """Run as a program (so it is executable): without OUT_DIR first, or with a flag it does not know or
    whose value is missing or not a number, exit 2 and the one usage line, before anything runs."""
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else a for a in args]
    proc = subprocess.run(["bench/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: bench/gpu_check.sh OUT_DIR ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert all(flag in proc.stderr for flag in ("--wheels", "--cpu-dry-run", "--train-flags", "--budget"))
    assert proc.stdout == "" and not out.exists()


def test_fetch_wheels_runs_as_a_program_and_wants_one_directory():
    proc = subprocess.run(["bench/gpu/fetch_wheels.sh"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bench/gpu/fetch_wheels.sh DIR"), proc.stderr
    assert proc.stderr.count("\n") == 1
