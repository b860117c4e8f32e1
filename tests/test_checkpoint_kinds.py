"""Every kind of checkpoint directory (checkpointing/resolver.py) through every consumer: --load in both
engines (a resume, and a start from the weights), generation, evaluation, conversion into ours, export to
Hugging Face. Each cell either works (the engines train an iteration from it; the tools produce their
output) or stops before any work with one line naming the directory, its kind and what to do instead.

The kinds are built once, small, and every cell runs in one process that imported the stack once
(tests/fault_harness.py: each engine's cell a job forked from it, the tools' cells one forked call)."""

import ast
import contextlib
import io
import json
import os
import re
import traceback

import pytest
from conftest import REPO, load_tool
from fault_harness import run_harness

KINDS = ["hf_qwen", "hf_qwen2", "megatron", "weights_only", "deepspeed", "none"]
TRAIN = ["--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "2",
         "--eval-interval", "1000", "--lr", "1e-3"]
SHAPED = ["--model-size", "tiny"]  # the kinds whose shape comes from the flags (a Hugging Face source fixes its own)
DEEPSPEED = ["--zero-engine", "deepspeed"]
DEEPSPEED_ENV = {"LOCAL_RANK": "0"}  # DeepSpeed asks for it even in a lone process
ENGINES = {"megatron resume": [], "megatron start": ["--finetune"],
           "deepspeed resume": DEEPSPEED, "deepspeed start": [*DEEPSPEED, "--finetune"]}
TOOLS = ["generate", "evaluate", "convert", "export"]
# Two iterations from the megatron checkpoint's weights (--finetune) in each engine: the first loss is the loaded
# weights', the second the update's from them (from DeepSpeed's fp32 master copies: stale ones would show).
WEIGHTS_ONLY_STARTS = {"weights megatron": [], **{f"weights zero{stage}": [*DEEPSPEED, "--zero-stage", str(stage)]
                                                  for stage in (1, 2, 3)}}

# What each refused cell's line says, besides the directory: the kind, and what to do instead. Every cell not
# listed works. (The Hugging Face kinds and weights-only checkpoints are always weights-only starts.)
CONVERT_FIRST = "tools/convert_checkpoint.py --load-dir {path} --save-dir NEW_DIR, without --hf-layout"
REFUSED = {
    ("megatron resume", "deepspeed"): ("DeepSpeed-engine checkpoint", "resume it with --zero-engine deepspeed"),
    ("megatron start", "deepspeed"): ("DeepSpeed-engine checkpoint", "start from it with --zero-engine deepspeed"),
    ("deepspeed resume", "megatron"): ("megatron-engine checkpoint", "resume it with --zero-engine megatron"),
    ("generate", "deepspeed"): ("DeepSpeed-engine checkpoint", CONVERT_FIRST),
    ("evaluate", "deepspeed"): ("DeepSpeed-engine checkpoint", CONVERT_FIRST),
    ("export", "deepspeed"): ("DeepSpeed-engine checkpoint", CONVERT_FIRST),
    ("convert", "megatron"): ("megatron-engine checkpoint", "it is ours already: to export it pass --hf-layout"),
    ("convert", "weights_only"): ("weights-only checkpoint", "it is ours already: to export it pass --hf-layout"),
    **{(consumer, "none"): ("does not exist", "pass a directory written by --save") for consumer in ENGINES},
    **{(consumer, "none"): ("does not exist", "expected a Hugging Face model directory") for consumer in TOOLS},
}


def _path(root, kind: str) -> str:
    return os.path.join(root, kind)


def build_hugging_face_kinds(root: str) -> None:
    """Random tiny models in both Hugging Face layouts, and the qwen2 one converted into ours (weights only)."""
    from megatron_qwen.config.model import model_preset
    from megatron_qwen.hf.load import import_hf
    from megatron_qwen.hf.random_model import write_random_hf

    for layout in ("qwen", "qwen2"):
        write_random_hf(_path(root, f"hf_{layout}"), model_preset("tiny"), layout)
    import_hf(_path(root, "hf_qwen2"), _path(root, "weights_only"))


def _engine_job(root: str, consumer: str, kind: str) -> dict:
    resume = consumer.endswith("resume") and kind in ("megatron", "deepspeed")
    argv = [*TRAIN, *ENGINES[consumer], "--load", _path(root, kind), "--train-iters", "2" if resume else "1",
            *(SHAPED if kind in ("megatron", "deepspeed", "none") else [])]
    return {"name": f"{consumer}|{kind}", "argv": argv, "env": DEEPSPEED_ENV if "deepspeed" in consumer else {}}


def _tool_cell(run) -> dict:
    """{code, stderr, error} of ``run()`` as a tool's main() reports it: its exit code (0 when it returns None),
    or 2 and the one line of a ConfigError it raises; any other exception is 1 and its traceback."""
    from megatron_qwen.config.errors import ConfigError

    stderr, cell = io.StringIO(), {}
    try:
        with contextlib.redirect_stderr(stderr):
            cell["code"] = run() or 0
    except ConfigError as e:
        cell.update(code=2, error=f"error: {e}")
    except Exception:
        cell["code"] = 1
        stderr.write(traceback.format_exc())
    cell["stderr"] = stderr.getvalue()
    return cell


def _generate(root: str, path: str) -> None:
    """tools/generate.py's path from the directory to new ids (the tokenizer aside: the tiny models' vocabulary
    is not Qwen's)."""
    from megatron_qwen.inference import generate, load_model_for_inference

    model = load_model_for_inference(path)
    assert len(generate(model, [[1, 2, 3]], 2, stop_ids=[])[0]) == 2


def _evaluate(root: str, path: str) -> None:
    """tools/evaluate.py up to lm-eval, which then reads the model directory as any Hugging Face model's: its
    checks, and the directory, a qwen2 export."""
    from megatron_qwen.checkpointing.resolver import Kind, resolve
    from megatron_qwen.evaluation.runner import EvalConfig, check_inputs, hf_model_dir

    check_inputs(EvalConfig(load=path, data_dir=root, tasks=[]))
    scratch = os.path.join(root, "scratch", os.path.basename(path))
    assert resolve(hf_model_dir(path, scratch)).kind is Kind.HF_QWEN2


def run_tool_cells(root: str, out: str) -> None:
    """The tools' cells, one after the other in this process (a child of fault_harness's), into ``out``:
    {consumer|kind: cell}."""
    convert = load_tool("convert_checkpoint")
    cells = {}
    for kind in KINDS:
        path = _path(root, kind)
        runs = {"generate": lambda: _generate(root, path), "evaluate": lambda: _evaluate(root, path),
                "convert": lambda: convert.main(["--load-dir", path, "--save-dir", os.path.join(root, f"ours_{kind}")]),
                "export": lambda: convert.main(["--load-dir", path, "--save-dir", os.path.join(root, f"hf_of_{kind}"),
                                                "--hf-layout", "qwen2"])}
        cells.update({f"{consumer}|{kind}": _tool_cell(runs[consumer]) for consumer in TOOLS})
    with open(out, "w") as f:
        json.dump(cells, f)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    base = [*TRAIN, *SHAPED, "--train-iters", "1", "--save-interval", "1"]
    jobs = [{"name": "hf kinds", "call": "test_checkpoint_kinds:build_hugging_face_kinds", "args": [str(root)],
             "fork": True},
            {"name": "megatron", "argv": [*base, "--save", _path(root, "megatron")]},
            {"name": "deepspeed", "argv": [*base, *DEEPSPEED, "--save", _path(root, "deepspeed")],
             "env": DEEPSPEED_ENV}]
    jobs += [_engine_job(str(root), consumer, kind) for consumer in ENGINES for kind in KINDS]
    jobs += [{"name": name, "argv": [*TRAIN, *SHAPED, *flags, "--finetune", "--load", _path(root, "megatron"),
                                     "--train-iters", "2"], "env": DEEPSPEED_ENV if flags else {}}
             for name, flags in WEIGHTS_ONLY_STARTS.items()]
    jobs.append({"name": "tools", "call": "test_checkpoint_kinds:run_tool_cells",
                 "args": [str(root), str(root / "tools.json")], "fork": True})
    results = run_harness(jobs, root)
    assert all(results[name][0]["codes"] == [0] for name in ("hf kinds", "megatron", "deepspeed", "tools")), results
    cells = {name: {"code": r[0]["codes"][0], "stderr": r[0]["output"]} for name, r in results.items()
             if "|" in name or name in WEIGHTS_ONLY_STARTS}
    cells.update(json.loads((root / "tools.json").read_text()))
    return root, cells


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("consumer", [*ENGINES, *TOOLS])
def test_each_kind_works_or_is_one_line(matrix, consumer, kind):
    root, cells = matrix
    cell, path = cells[f"{consumer}|{kind}"], _path(root, kind)
    errors = [line for line in cell["stderr"].splitlines() if line.startswith("error: ")]
    if (consumer, kind) not in REFUSED:
        assert cell["code"] == 0 and not errors, cell["stderr"][-3000:]
        if consumer in ENGINES:
            resumed = consumer.endswith("resume") and kind in ("megatron", "deepspeed")
            said, trained = ("continuing at iteration 1", 2) if resumed else ("loaded weights only from", 1)
            assert said in cell["stderr"] and f" iteration {trained:8d}/" in cell["stderr"], cell["stderr"][-3000:]
        return
    what, instead = REFUSED[(consumer, kind)]
    line = cell.get("error") or (errors[0] if len(errors) == 1 else "")
    assert cell["code"] == 2 and len(errors) <= 1 and "Traceback" not in cell["stderr"], cell["stderr"][-3000:]
    flag = "--load-dir" if consumer in ("convert", "export") else "--load"
    assert line.startswith(f"error: {flag} {path} ") and what in line and instead.format(path=path) in line, line


def _losses(stderr: str) -> list[float]:
    return [float(x) for x in re.findall(r"lm loss: ([0-9.E+-]+)", stderr)]


@pytest.mark.parametrize("stage", (1, 2, 3))
def test_deepspeed_weights_only_start_equals_the_megatron_engines(matrix, stage):
    """A DeepSpeed start from a checkpoint's weights (read into the module DeepSpeed holds, gathered under
    ZeRO-3, then its fp32 master copies refreshed) trains as the megatron engine's start from the same weights."""
    _, cells = matrix
    reference, got = cells["weights megatron"], cells[f"weights zero{stage}"]
    assert reference["code"] == 0 and got["code"] == 0, got["stderr"][-3000:]
    want, losses = _losses(reference["stderr"]), _losses(got["stderr"])
    assert len(want) == len(losses) == 2, (want, losses)
    assert losses == pytest.approx(want, rel=1e-5), (want, losses)


def _code_without_docstrings(path: str) -> str:
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0], ast.Expr):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)  # comments are gone too


def test_the_kind_markers_are_read_in_the_resolver_only():
    """A file that tells the kinds apart is named, in the library and the tools, only where the kind is decided
    (checkpointing/resolver.py) and where the file is written (the tracker's name: directory.py, which reads
    and writes it; other modules ask directory.latest_iteration for the iteration, never for a kind)."""
    markers = ["hf_import.json", "deepspeed.json", "IMPORT_MARKER", "DEEPSPEED_MARKER", "'model_type'",
               "'architectures'", "'config.json'", "latest_checkpointed_iteration.txt", "HF_CONFIG"]
    writers = {"megatron_qwen/checkpointing/resolver.py", "megatron_qwen/checkpointing/directory.py",
               "megatron_qwen/checkpointing/weights.py", "megatron_qwen/training/deepspeed_checkpoint.py",
               "megatron_qwen/hf/layouts.py", "megatron_qwen/hf/side_files.py", "megatron_qwen/hf/random_model.py"}
    found = set()
    for folder in ("megatron_qwen", "tools"):
        for dirpath, _, names in os.walk(REPO / folder):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                if any(m in _code_without_docstrings(path) for m in markers):
                    found.add(os.path.relpath(path, REPO))
    assert found <= writers, found - writers
