"""tools/plot_metrics.py: a PNG from metrics JSONL files, and one-line errors for bad files."""

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
from conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "plot_metrics.py"), *args],
                          capture_output=True, text=True, timeout=120)


def write_metrics(path: Path, iterations: int, eval_interval: int) -> None:
    """Lines shaped like the training loop's: step records, and evaluation records in between."""
    with open(path, "w") as f:
        for it in range(1, iterations + 1):
            f.write(json.dumps({"iteration": it, "lm_loss": 11 * math.exp(-it / 30) + 2, "lr": 1e-3 * min(1, it / 10),
                                "grad_norm": 1.0, "tokens_per_sec": 800.0 + it, "tokens_per_sec_per_gpu": 400.0 + it,
                                "tflops_per_gpu": 0.02, "mfu": None, "consumed_samples": 8 * it}) + "\n")
            if it % eval_interval == 0:
                f.write(json.dumps({"iteration": it, "validation_loss": 11 * math.exp(-it / 30) + 2.3,
                                    "validation_ppl": 100.0}) + "\n")


def test_plots_several_files_to_a_valid_png(tmp_path):
    base, code = tmp_path / "base.jsonl", tmp_path / "code.jsonl"
    write_metrics(base, 60, 20)
    write_metrics(code, 20, 10)
    out = tmp_path / "plots" / "curves.png"
    result = plot("--metrics-file", str(base), str(code), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    height, width, _ = matplotlib.image.imread(out).shape  # decodes: a whole, valid PNG
    assert width > height > 100


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_metrics(bad, 2, 10)
    with open(bad, "a") as f:
        f.write('{"iteration": 3, "lm_loss": \n')
    result = plot("--metrics-file", str(bad), "--output", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert f"{bad}:3: not valid JSON" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_record_without_iteration_is_rejected(tmp_path):
    bad = tmp_path / "noiter.jsonl"
    bad.write_text('{"lm_loss": 3.0}\n')
    result = plot("--metrics-file", str(bad), "--output", str(tmp_path / "x.png"))
    assert result.returncode == 1 and f"{bad}:1:" in result.stderr and "iteration" in result.stderr


def test_missing_and_empty_files_are_named(tmp_path):
    good, empty = tmp_path / "good.jsonl", tmp_path / "empty.jsonl"
    write_metrics(good, 5, 5)
    empty.write_text("\n")
    for path, message in ((tmp_path / "absent.jsonl", "no such file"), (empty, "empty")):
        result = plot("--metrics-file", str(good), str(path), "--output", str(tmp_path / "x.png"))
        assert result.returncode == 1
        assert f"--metrics-file {path}: {message}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
