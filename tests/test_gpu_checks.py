"""bench/gpu_check.sh's stages for the GPU path, as far as the CPU can run them: the command line of every stage on a
machine with transformer-engine (its Python stood in for by a script that records what it is asked), the packed-SFT
check itself (sdpa and local here), the report's sections, and the Code-Qwen check's layout against the example
scripts'."""

import json
import os
import subprocess
import sys

from conftest import REPO, quiet_env

sys.path[:0] = [str(REPO / "bench"), str(REPO / "bench" / "gpu")]
from check_code_qwen_layout import LAYOUT, TINY  # noqa: E402

from megatron_qwen.config.recipes import PRETRAIN_CODE  # noqa: E402
from megatron_qwen.training.arguments import parse_run_config  # noqa: E402
from megatron_qwen.training.preflight import check_backend  # noqa: E402

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
  *available_backend*) echo {backend} ;;
  *device_count*) echo {gpus} ;;
esac
"""


def commands_on_a_gpu_machine(tmp_path, backend: str, gpus: int) -> tuple[list[str], str]:
    """(the command line of each python call gpu_check.sh makes, its output) where CUDA is present, auto picks
    ``backend`` and ``gpus`` devices are visible."""
    log, fake = tmp_path / "calls.txt", tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(log=log, backend=backend, gpus=gpus))
    fake.chmod(0o755)
    proc = subprocess.run(["bench/gpu_check.sh", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          env=quiet_env(PYTHON=str(fake)), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return log.read_text().splitlines(), proc.stdout


def test_every_training_stage_names_its_back_end(tmp_path):
    """With transformer-engine installed, every training run passes --transformer-impl, the compiled-layer ones
    sdpa (the config refuses --compile-layers with transformer-engine), and each stage's name says which; the
    Code-Qwen stage is skipped on one GPU, saying why."""
    calls, out = commands_on_a_gpu_machine(tmp_path, "te", gpus=1)
    runs = [c.split() for c in calls if "bench_train.py" in c or "profile_step.py" in c]
    assert len(runs) == 7
    for words in runs:
        impl = words[len(words) - 1 - words[::-1].index("--transformer-impl") + 1]  # the last one given
        assert impl == ("sdpa" if "--compile-layers" in words else "transformer_engine"), words
    assert "== throughput: 1.8B (te)" in out and "== fast path: compiled layers (sdpa)" in out
    assert any("check_packed_sft.py" in c for c in calls)
    assert not any("check_code_qwen_layout.py" in c for c in calls)
    assert "== correctness: Code-Qwen layout, TP2 x CP2 + SP vs TP1 (te): skipped, needs 4 GPUs and " \
           "transformer-engine; here 1 GPU(s), back end te" in out


def test_code_qwen_stage_runs_on_four_gpus_with_te(tmp_path):
    calls, _ = commands_on_a_gpu_machine(tmp_path, "te", gpus=4)
    assert any("check_code_qwen_layout.py" in c for c in calls)


def test_code_qwen_check_runs_the_example_layout():
    """The layout the GPU check runs is the Code-Qwen scripts' with launch.sh's shared flags, and it passes the
    checks a run makes before any process group, on four GPUs."""
    script = (REPO / "examples/pretrain_code/qwen_7b.sh").read_text()
    launcher = (REPO / "examples/launch.sh").read_text()
    assert "--tensor-model-parallel-size 2 --context-parallel-size 2 --sequence-parallel" in script
    assert "--bf16 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather" in launcher
    assert " ".join(LAYOUT) == ("--tensor-model-parallel-size 2 --context-parallel-size 2 --sequence-parallel "
                                "--bf16 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather")
    cfg = parse_run_config(PRETRAIN_CODE, TINY + LAYOUT)
    cfg.validate(world_size=4)
    check_backend(cfg)
    assert cfg.build.transformer_impl == "te" and cfg.parallel.data_parallel_size(4) == 1


def test_packed_sft_check_runs_and_reports(tmp_path):
    """The packed-SFT check on the CPU's back ends (bf16): packed equals padded per conversation, and the control
    without boundaries misses, as on a GPU; report.py turns it and a skipped Code-Qwen stage into results.md."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    env = quiet_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "bench"), str(REPO / "bench" / "gpu")]))
    proc = subprocess.run([sys.executable, "bench/gpu/check_packed_sft.py", str(work / "packed_sft.json"), "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((work / "packed_sft.json").read_text())
    assert {c["name"].split(" ")[0] for c in result["checks"]} == {"local", "sdpa"}
    assert all(c["pass"] for c in result["checks"]) and len(result["checks"]) == 8
    assert sum("must exceed" in c["metric"] for c in result["checks"]) == 4
    (work / "stages.tsv").write_text("correctness: Code-Qwen layout, TP2 x CP2 + SP vs TP1 (te)\tskipped (needs 4 "
                                     "GPUs and transformer-engine; here 1 GPU(s), back end te)\t0\n")
    subprocess.run([sys.executable, "bench/gpu/report.py", str(work), str(out), "gpu", "test"], cwd=REPO,
                   env=quiet_env(), check=True, timeout=120)
    md = (out / "results.md").read_text()
    assert "| sdpa bf16, packed vs padded: per-conversation loss" in md
    assert "Not run: skipped (needs 4 GPUs and transformer-engine; here 1 GPU(s), back end te)." in md
