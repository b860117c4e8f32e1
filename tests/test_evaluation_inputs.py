"""tools/evaluate.py's inputs: bad ones are one line before any model is loaded (a negative --limit, an MMLU
dev file with fewer rows than the 5 shots), and its --output is no more readable than the files it read
(evaluation/output_mode.py)."""

import csv
import os
import stat

import pytest
from conftest import load_tool

from megatron_qwen.evaluation.benchmarks import select
from megatron_qwen.evaluation.output_mode import input_files, narrowest_mode, open_no_looser


def write_mmlu_subject(root, subject, dev_rows, test_rows=3):
    for split, n in (("dev", dev_rows), ("test", test_rows)):
        os.makedirs(root / "mmlu" / split, exist_ok=True)
        with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([[f"Which is {i}?", str(i), "1", "2", "3", "A"] for i in range(n)])


def evaluate_in_process(args, capsys):
    try:
        rc = load_tool("evaluate").main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", ["negative_limit", "one_dev_row"])
def test_bad_evaluation_input_is_one_line(case, tmp_path, capsys):
    data, model = tmp_path / "data", tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    write_mmlu_subject(data, "anatomy", dev_rows=1 if case == "one_dev_row" else 5)
    limit = ["--limit", "-1"] if case == "negative_limit" else []
    rc, err = evaluate_in_process(["--load", model, "--data-dir", data, "--tasks", "mmlu:anatomy", *limit], capsys)
    needle = {"negative_limit": "argument --limit: -1 must be above 0",
              "one_dev_row": f"{data}/mmlu/dev/anatomy_dev.csv has 1 row(s), fewer than the 5 examples"}[case]
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_output_is_no_looser_than_a_root_only_input(tmp_path):
    """A benchmark file reached through a symlink in --data-dir, readable by its owner only: the output
    written from it is too, also over an existing world-readable output."""
    data = tmp_path / "data"
    write_mmlu_subject(data, "anatomy", dev_rows=5)
    private = tmp_path / "private_test.csv"
    os.replace(data / "mmlu" / "test" / "anatomy_test.csv", private)
    os.chmod(private, 0o600)
    os.symlink(private, data / "mmlu" / "test" / "anatomy_test.csv")
    inputs = input_files(select(["mmlu:anatomy"]), str(data))
    assert str(data / "mmlu" / "test" / "anatomy_test.csv") in inputs and len(inputs) == 2
    exemplars = str(data / "gsm8k" / "gsm8k_prompt.txt")  # quoted in every GSM8K prompt of --protocol qwen
    assert exemplars in input_files(select(["gsm8k"]), str(data), gsm8k_exemplar_file=True)
    assert exemplars not in input_files(select(["gsm8k"]), str(data))
    assert narrowest_mode(inputs) == 0o600
    out = tmp_path / "report.json"
    out.write_text("old")
    os.chmod(out, 0o644)
    with open_no_looser(str(out), inputs) as f:
        f.write("{}")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and out.read_text() == "{}"
    os.chmod(private, 0o644)  # world-readable inputs: the umask's mode, as any file
    umask = os.umask(0o022)
    try:
        assert narrowest_mode(inputs) == 0o644
    finally:
        os.umask(umask)
