"""The planner's command line (tools/plan.py): the layouts it lists, its refusals in one line, and a custom
vocabulary padded as training pads it. Its memory estimator: tests/test_memory.py."""

import subprocess
import sys

import pytest
from conftest import REPO, load_tool, quiet_env

from megatron_qwen.planning.memory import GIB


def run_plan(flags: list[str]) -> int:
    """tools/plan.py's exit status for ``flags``, run in this process (argparse's errors exit)."""
    try:
        return load_tool("plan").main(flags)
    except SystemExit as e:
        return e.code


def table_rows(output: str) -> list[list[str]]:
    """The planner's table, one list of cells per layout."""
    return [line.split() for line in output.split("\n---")[1].splitlines()[1:] if line.strip()]


def test_planner_lists_only_layouts_that_fit_fastest_first():
    proc = subprocess.run([sys.executable, "tools/plan.py", "--model-size", "7b", "--seq-length", "2048",
                           "--num-gpus", "8", "--all", "--top", "0"], cwd=REPO, env=quiet_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    assert len(rows) == int(proc.stdout.split(" of ")[0].split()[-1])  # "269 of 291 valid layouts fit"
    layouts, totals, times = set(), [], []
    for row in rows:
        tp, pp, vp, cp, dp = map(int, row[1:6])
        assert tp * pp * cp * dp == 8
        layouts.add((tp, pp, vp, cp, dp, row[6], row[7]))
        totals.append(float(row[13]))
        times.append(float(row[16]))
    assert max(totals) <= 72.0  # 80 GiB less the 10% headroom
    assert times == sorted(times)
    # By hand: without ZeRO every GPU holds 7.721e9 x 18 bytes = 129 GiB; with it 7.721e9 x (2 + 4 + 12 / 8)
    # bytes = 53.9 GiB, plus activations.
    assert (1, 1, 1, 1, 8, "no", "none") not in layouts
    zero = next(r for r in rows if r[1:8] == ["1", "1", "1", "1", "8", "yes", "none"])
    assert sum(map(float, zero[9:12])) == pytest.approx(7.721e9 * 7.5 / GIB, abs=0.2)


def test_planner_by_default_lists_each_slower_layout_only_if_it_needs_less_memory(capsys):
    assert run_plan(["--model-size", "7b", "--num-gpus", "8", "--top", "0"]) == 0
    rows = table_rows(capsys.readouterr().out)
    totals = [float(r[13]) for r in rows]
    assert len(rows) > 3 and totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)


@pytest.mark.parametrize("flags,message", [
    (["--model-size", "7b", "--num-gpus", "0"], "error: argument --num-gpus: 0 must be at least 1"),
    (["--model-size", "7b", "--achievable-tflops", "inf"], "error: argument --achievable-tflops: inf must be a finite"),
    (["--model-size", "9b"], "error: --model-size '9b' is unknown"),
    (["--model-size", "7b", "--global-batch-size", "7", "--micro-batch-size", "2"],
     "error: --global-batch-size 7 is not a multiple of --micro-batch-size 2"),
    (["--hidden-size", "256", "--num-layers", "2"], "error: pass --model-size or every shape flag; missing "
                                                    "--num-attention-heads --ffn-hidden-size --vocab-size"),
    (["--model-size", "7b", "--hidden-size", "100", "--num-attention-heads", "3"],
     "error: --hidden-size 100 is not a multiple of --num-attention-heads 3"),
    (["--model-size", "7b", "--num-gpus", "7"], "error: no TP x PP x CP x DP split of --num-gpus 7"),
    (["--model-size", "7b", "--headroom", "1.5"], "error: argument --headroom: 1.5 must be at least 0 and below 1"),
    (["--model-size", "7b", "--transformer-impl", "cuda"], "error: argument --transformer-impl: invalid choice"),
    (["--model-size", "7b", "--compile-layers"], "error: --compile-layers is planned for the sdpa and flash"),
])
def test_planner_refuses_bad_flags_in_one_line(capsys, flags, message):
    assert run_plan(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_planner_says_when_nothing_fits(capsys):
    assert run_plan(["--model-size", "72b", "--num-gpus", "8", "--zero-engine", "megatron"]) == 1
    assert "no layout fits in 72.0 GiB: the least memory is" in capsys.readouterr().out
    # DeepSpeed's ZeRO-3 with offload fits the GPUs; its 16 bytes a parameter do not fit 1 TiB of host memory.
    assert run_plan(["--model-size", "72b", "--num-gpus", "8"]) == 1
    assert "offload to CPU memory, the least 134.6 GiB per GPU" in capsys.readouterr().out  # 16 x 72.29e9 / 8


def test_planner_pads_a_custom_vocabulary_as_training_does(capsys):
    flags = ["--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "4", "--ffn-hidden-size", "704",
             "--vocab-size", "1000", "--num-gpus", "2", "--global-batch-size", "8"]
    assert run_plan(flags) == 0
    assert "1,024 vocabulary rows" in capsys.readouterr().out
