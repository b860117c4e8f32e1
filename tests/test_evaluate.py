"""tools/evaluate.py (megatron_qwen/evaluation): the multiple-choice benchmarks against transformers' own
log-likelihoods on prompts built by hand from Qwen's published scripts, the same configurations through lm-eval's
own command line, a run from a checkpoint of ours with sandboxed code, and bad input.

`random` is a random tiny Qwen2ForCausalLM (tests/hf_fixtures.py's tiny_qwen2), so log-likelihoods differ between
choices; `successor` (tests/evaluate_fixtures.py) is one whose greedy replies are fixed in advance.
"""

import functools
import json
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pandas
import pytest
import torch
from conftest import REPO, load_tool, quiet_env
from evaluate_fixtures import run_evaluate, samples, successor_model, write_choice_csvs, write_jsonl
from hf_fixtures import convert, tiny_qwen2

from megatron_qwen.evaluation.benchmarks import select
from megatron_qwen.evaluation.task_configs import protocol, write_task_configs

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

TOOL = os.path.join(REPO, "tools", "evaluate.py")
MMLU_SUBJECTS, CEVAL_SUBJECTS = ("anatomy", "virology"), {"logic": 2, "law": 5}  # C-Eval: subjects of two sizes
GSM8K = [("Tom has 5 apples and finds 2 more. How many?", "5"), ("What is 3 + 4?", "7"),
         ("What is 5 times 1?", "5"), ("What is 6 + 6?", "12")]
GSM8K_EXEMPLARS = "Question: What is 1 + 1?\nLet's think step by step\n1 + 1 = 2\nThe answer is 2\n"
# HumanEval-format tasks whose prompt ends in "x = ", after which the successor model writes "42": one program
# that passes, and three that must fail in the sandbox without stopping the run.
HUMANEVAL_BODIES = {"passes": "", "endless loop": "while True:\n    pass\n",
                    "network": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)\n",
                    "write outside": "open(OUTSIDE, 'w').write('x')\n"}
# after "step by step\n" a number, a blank line, another number (Qwen cuts at the blank line); after " " "42"
CHAINS = {"\n": "5 apples\n\n7", " ": "42"}


def mmlu_rows(s_i: int, n: int) -> list[list[str]]:
    """Choices written "None" and "1.50": pandas reads them as NaN and 1.5, and Qwen's scripts print them so."""
    return [[f"Which is {i} + {s_i}?", str(i + s_i), "None", "1.50", f"{i},{s_i}", "ABCD"[(i + s_i) % 4]]
            for i in range(n)]


def ceval_rows(s_i: int, n: int) -> list[list[str]]:
    return [[f"第{i}题：{i} + {s_i} = ____。", str(i + s_i), str(i), "零", f"{i}{s_i}", "ABCD"[(i * 3 + s_i) % 4]]
            for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny_qwen2(seed=7).save_pretrained(root / "random")
    from megatron_qwen.hf.tokenizer_files import write_tokenizer_files

    write_tokenizer_files(str(root / "random"), 512)
    successor_model(CHAINS).save_pretrained(root / "successor_src")
    convert(["--load-dir", root / "successor_src", "--save-dir", root / "successor_ours"])  # --load ours
    data = root / "data"
    for s_i, subject in enumerate(MMLU_SUBJECTS):
        write_choice_csvs(data, "mmlu", subject, {"dev": mmlu_rows(s_i, 5), "test": mmlu_rows(s_i + 7, 4)})
    for s_i, (subject, n) in enumerate(CEVAL_SUBJECTS.items()):
        write_choice_csvs(data, "ceval", subject, {"dev": ceval_rows(s_i, 5), "val": ceval_rows(s_i + 5, n)})
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": q, "answer": f"So.\n#### {a}"} for q, a in GSM8K])
    (data / "gsm8k" / "gsm8k_prompt.txt").write_text(GSM8K_EXEMPLARS)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    outside = root / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # writable by anyone: only the sandbox can stop the write
    humaneval = []
    for i, body in enumerate(HUMANEVAL_BODIES.values()):
        body = body.replace("PORT", str(listener.getsockname()[1])).replace("OUTSIDE", repr(str(outside / "f")))
        humaneval.append({"task_id": f"HumanEval/{i}", "prompt": f"def add(a, b):\n    return a + b\n{body}x = ",
                          "canonical_solution": "", "entry_point": "add",
                          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"})
    write_jsonl(data / "humaneval" / "HumanEval.jsonl", humaneval)
    yield SimpleNamespace(root=root, data=data, random=root / "random", ours=root / "successor_ours", outside=outside)
    listener.close()


def run_tool(args, tmpdir):
    """tools/evaluate.py in its own process, its temporary files under ``tmpdir``."""
    os.makedirs(tmpdir, exist_ok=True)
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, env=quiet_env(TMPDIR=str(tmpdir)),
                          capture_output=True, text=True, timeout=600)


CHOICE_TASKS = [f"mmlu:{','.join(MMLU_SUBJECTS)}", f"ceval:{','.join(CEVAL_SUBJECTS)}"]


@pytest.fixture(scope="module")
def choice_run(setup):
    return run_evaluate(load=setup.random, data_dir=setup.data, tasks=CHOICE_TASKS, batch_size=4)


def qwen_prompts(data, bench: str, subject: str) -> list[tuple[str, str]]:
    """(prompt, gold letter) per test question, built as evaluate_mmlu.py / evaluate_ceval.py build them: the
    files read by pandas, each value printed by str()."""
    header, split, names = (True, "val", None) if bench == "ceval" else (False, "test", list("qABCDa"))
    read = (lambda s: pandas.read_csv(data / bench / s / f"{subject}_{s}.csv", **({} if header else {"names": names})))
    q, answer = ("问题：", "\n答案：") if bench == "ceval" else ("Question: ", "\nAnswer:")
    column = "question" if header else "q"
    gold = "answer" if header else "a"

    def block(row, with_answer: bool) -> str:
        text = q + str(row[column]) + "".join(f"\n{c}. {row[c]}" for c in "ABCD") + answer
        return text + ((" " if bench == "mmlu" else "") + row[gold] + "\n\n" if with_answer else "")

    shots = "".join(block(r, True) for _, r in read("dev").iterrows())
    first = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
             if bench == "mmlu" else "")
    return [(first + shots + block(r, False), r[gold]) for _, r in read(split).iterrows()]


@functools.cache
def load_transformers(model_dir):
    return (transformers.AutoTokenizer.from_pretrained(model_dir),
            transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval())


def transformers_loglikelihoods(model_dir, prompt: str, continuations: list[str]) -> list[float]:
    """log p(choice | prompt) of one-token choices (each letter is one token, with or without its space)."""
    tok, model = load_transformers(model_dir)
    choices = [tok(c).input_ids for c in continuations]
    assert all(len(c) == 1 for c in choices)
    with torch.no_grad():
        last = model(torch.tensor([tok(prompt).input_ids])).logits[0, -1].float().log_softmax(-1)
    return [last[c[0]].item() for c in choices]


@pytest.mark.parametrize("bench, subjects", [("mmlu", MMLU_SUBJECTS), ("ceval", tuple(CEVAL_SUBJECTS))])
def test_multiple_choice_as_qwens_scripts(setup, choice_run, bench, subjects):
    """The logged prompt is the hand-built one, the per-choice log-likelihoods are transformers' on it, and the
    score is over all questions (MMLU) or the mean over subjects (C-Eval, as evaluate_ceval.py)."""
    continuations = [" A", " B", " C", " D"] if bench == "mmlu" else ["A", "B", "C", "D"]
    hits = {}
    for subject in subjects:
        logged = samples(choice_run, f"qwen_{bench}_{subject}")
        built = qwen_prompts(setup.data, bench, subject)
        assert [s["arguments"][0][0] for s in logged] == [p for p, _ in built]
        assert [s["arguments"][0][1] for s in logged] == [continuations[0]] * len(built)
        hits[subject] = []
        for sample, (prompt, gold) in zip(logged, built):
            lls = transformers_loglikelihoods(setup.random, prompt, continuations)
            assert [r[0][0] for r in sample["resps"]] == pytest.approx(lls, abs=2e-3)
            hits[subject].append(float("ABCD"[max(range(4), key=lls.__getitem__)] == gold))
    every = [h for subject in subjects for h in hits[subject]]
    assert len(set(every)) == 2, "a test that cannot tell right from wrong answers"
    per_subject = sum(sum(h) / len(h) for h in hits.values()) / len(hits)
    expected = per_subject if bench == "ceval" else sum(every) / len(every)
    assert choice_run["scores"][bench]["score"] == pytest.approx(100 * expected)
    if bench == "ceval":
        assert per_subject != pytest.approx(sum(every) / len(every)), "subjects chosen so the two means differ"


def test_score_equals_lm_eval_cli(setup, choice_run, tmp_path):
    """lm-eval's own command line on the same model, files and task configurations gives the same numbers: the
    qwen protocol is configuration of lm-eval's engine."""
    include = write_task_configs(select(CHOICE_TASKS), str(setup.data), str(tmp_path / "t"), protocol("qwen", False))
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                           f"pretrained={setup.random},dtype=auto", "--tasks", "qwen_mmlu", "qwen_ceval",
                           "--include_path", include, "--batch_size", "4", "--device", "cpu",
                           "--output_path", str(tmp_path / "cli")],
                          cwd=REPO, env=quiet_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result_file,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "cli") for f in files
                      if f.startswith("results")]
    cli = json.loads(open(result_file).read())
    ours = choice_run["lm_eval"]
    for group in ("qwen_mmlu", "qwen_ceval"):
        assert cli["groups"][group]["acc,none"] == ours["groups"][group]["acc,none"]
    for subject in MMLU_SUBJECTS:
        assert cli["results"][f"qwen_mmlu_{subject}"]["acc,none"] == ours["results"][f"qwen_mmlu_{subject}"]["acc,none"]


def test_generation_and_sandboxed_code_from_our_checkpoint(setup):
    """--load of our checkpoint (exported on the fly), Qwen's GSM8K: the reply "5 apples\\n\\n7" counts as 5, cut
    at the blank line before the last integer is taken; HumanEval's sandbox passes one program and fails the
    endless loop, the network connection and the write outside its directory, with the run going on."""
    out = setup.root / "gen.json"
    proc = run_tool(["--load", setup.ours, "--data-dir", setup.data, "--tasks", "gsm8k", "humaneval",
                     "--allow-code-execution", "--code-timeout", 3, "--output", out], setup.root / "tmp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert [p for p in os.listdir(setup.root / "tmp") if p.startswith("megatron_qwen_eval_")] == []  # deleted
    gsm8k = samples(report, "qwen_gsm8k")
    assert [s["arguments"][0][0] for s in gsm8k] == [f"{GSM8K_EXEMPLARS}\nQuestion: {q}\nLet's think step by step\n"
                                                      for q, _ in GSM8K]
    assert {s["resps"][0][0] for s in gsm8k} == {"5 apples"} and {s["filtered_resps"][0] for s in gsm8k} == {"5"}
    assert [s["exact_match"] for s in gsm8k] == [1.0, 0.0, 1.0, 0.0]  # the answer key: 5, 7, 5, 12
    assert report["scores"]["gsm8k"]["score"] == pytest.approx(50.0)
    passed = [s["pass_at_1"] for s in samples(report, "qwen_humaneval")]
    assert passed == [1.0, 0.0, 0.0, 0.0]
    assert report["scores"]["humaneval"]["score"] == pytest.approx(25.0)
    assert os.listdir(setup.outside) == []
    assert re.search(r"^GSM8K\s+8\s+50\.0\s+21\.2\s+51\.7\s+61\.3\s+Table 2$", proc.stdout, re.M), proc.stdout


def main_in_process(args, capsys):
    main = load_tool("evaluate").main
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("case, expected", [
    ("missing file", "task gsm8k expects gsm8k/test.jsonl, which is missing"),
    ("wrong format", "its first record lacks question, answer"),
    ("not json", "is not in the benchmark's published format"),
    ("no exemplar file", "expects gsm8k/gsm8k_prompt.txt, which is missing: it is eval/gsm8k_prompt.txt of "
                         "https://github.com/QwenLM/Qwen"),
    ("unknown task", "--tasks mmmlu: unknown task"),
    ("no checkpoint", "does not exist"),
    ("code without flag", "add --allow-code-execution"),
    ("zero timeout", "argument --code-timeout: 0 must be above 0"),
    ("negative memory", "argument --code-memory-mb: -1 must be at least 1"),
    ("math-qwen base", "--published math-qwen: the report publishes only Math-Qwen-Chat: add --chat"),
])
def test_bad_input_is_one_line(tmp_path, capsys, case, expected):
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    gsm8k = data / "gsm8k" / "test.jsonl"
    if case == "wrong format":
        gsm8k.write_text(json.dumps({"q": "1 + 1?", "a": "2"}) + "\n")
    elif case == "not json":
        gsm8k.write_text("{not json\n")
    elif case != "missing file":
        gsm8k.write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
    if case not in ("missing file", "wrong format", "not json", "no exemplar file"):
        (data / "gsm8k" / "gsm8k_prompt.txt").write_text(GSM8K_EXEMPLARS)
    tasks = {"unknown task": ["mmmlu"], "code without flag": ["humaneval"]}.get(case, ["gsm8k"])
    load = tmp_path / "nowhere" if case == "no checkpoint" else model
    extra = {"zero timeout": ["--code-timeout", "0"], "negative memory": ["--code-memory-mb", "-1"],
             "math-qwen base": ["--published", "math-qwen"]}.get(case, [])
    rc, err = main_in_process(["--load", load, "--data-dir", data, "--tasks", *tasks, *extra], capsys)
    assert rc == 2 and len(err) == 1 and expected in err[0], err


def test_curation_reads_the_same_data_dir(tmp_path):
    """--eval-data given an evaluation --data-dir indexes every benchmark file in it, as the evaluation reads it."""
    from megatron_qwen.curate.decont import EvalNgramIndexer

    data = tmp_path / "data"
    write_choice_csvs(data, "mmlu", "anatomy", {"dev": mmlu_rows(0, 5), "test": mmlu_rows(1, 4)})
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": q, "answer": a} for q, a in GSM8K])
    step = EvalNgramIndexer([str(data)], str(tmp_path / "index"), n=3)
    step.run()
    assert sorted(os.listdir(tmp_path / "index")) == ["gsm8k.index.hashes", "mmlu.index.hashes"]
    assert step.stats["samples_mmlu"].total == 9 and step.stats["samples_gsm8k"].total == len(GSM8K)


def test_published_numbers_are_the_reports():
    """The 1.8B row of Table 2 as the report prints it (the README's numbers were another release's)."""
    from megatron_qwen.evaluation.published import PUBLISHED

    row = PUBLISHED[("qwen", False)]["1.8b"]
    assert [row[b][0] for b in ("mmlu", "ceval", "gsm8k", "math", "humaneval", "mbpp", "bbh")] == [
        44.6, 54.7, 21.2, 5.6, 17.1, 14.8, 28.2]
    assert {table for scores in PUBLISHED[("qwen", True)].values() for _, table in scores.values()} == {
        "Table 5, 0-shot", "Table 10", "Table 12, MATH500"}

