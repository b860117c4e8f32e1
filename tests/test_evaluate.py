"""tools/evaluate.py (megatron_qwen/evaluation): the report's benchmarks through lm-evaluation-harness on local
files, against values computed without lm-eval, and against lm-eval's own command line.

Two tiny Qwen2ForCausalLM models (transformers' own, the published 151,936 rows): `random` (tests/
hf_fixtures.py's tiny_qwen2, for log-likelihoods that differ between choices) and `fives`, whose greedy output
is always the token "5" (every layer's output projection zeroed, one embedding dimension constant, the head
reading that dimension into "5" alone), so a generation task's answers are known: "555" at 3 new tokens.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, load_tool, quiet_env
from hf_fixtures import convert, tiny_qwen2

from megatron_qwen.evaluation.benchmarks import select
from megatron_qwen.evaluation.task_configs import write_task_configs

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

TOOL = os.path.join(REPO, "tools", "evaluate.py")
FIVE = 20  # the id of "5"
MMLU_SUBJECTS = ("anatomy", "virology")


def fives_model():
    model = tiny_qwen2(seed=7)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[FIVE, 0] = 1.0
    return model


def write_mmlu(root, subjects):
    for s_i, subject in enumerate(subjects):
        for split, n in (("dev", 5), ("test", 4)):
            os.makedirs(root / "mmlu" / split, exist_ok=True)
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
                for i in range(n):
                    csv.writer(f).writerow([f"Which is {i} + {s_i}?", str(i + s_i), "None", "1.50", f"{i},{s_i}",
                                            "ABCD"[(i + s_i) % 4]])


def write_jsonl(path, rows):
    os.makedirs(path.parent, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


GSM8K = [("Tom has 500 apples and finds 55 more. How many?", "555"), ("What is 3 + 4?", "7"),
         ("What is 5 times 111?", "555"), ("What is 6 + 6?", "12")]
# HumanEval-format tasks whose prompt ends in "x = ", so the fives model's "555" completes a valid program:
# one that passes, and three that must fail in the sandbox without stopping the run.
HUMANEVAL_BODIES = {"passes": "", "endless loop": "while True:\n    pass\n",
                    "network": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)\n",
                    "write outside": "open(OUTSIDE, 'w').write('x')\n"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny_qwen2(seed=7).save_pretrained(root / "random")
    fives_model().save_pretrained(root / "fives_src")
    from megatron_qwen.hf.tokenizer_files import write_tokenizer_files

    write_tokenizer_files(str(root / "random"), 512)
    convert(["--load-dir", root / "fives_src", "--save-dir", root / "fives_ours"])  # --load ours: export on the fly
    data = root / "data"
    write_mmlu(data, MMLU_SUBJECTS)
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": q, "answer": f"So.\n#### {a}"} for q, a in GSM8K])
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
    yield SimpleNamespace(root=root, data=data, random=root / "random", ours=root / "fives_ours", outside=outside)
    listener.close()


def run_tool(args, tmpdir):
    """tools/evaluate.py in its own process, its temporary files under ``tmpdir``."""
    os.makedirs(tmpdir, exist_ok=True)
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, env=quiet_env(TMPDIR=str(tmpdir)),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mmlu_run(setup):
    out = setup.root / "mmlu.json"
    proc = run_tool(["--load", setup.random, "--data-dir", setup.data, "--tasks", f"mmlu:{','.join(MMLU_SUBJECTS)}",
                     "--output", out, "--batch-size", 4], setup.root / "tmp_mmlu")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def independent_mmlu(model_dir, data, subject):
    """(per-question log-likelihoods of " A".." D", gold index) with transformers: the 5-shot prompt built by
    hand from the published MMLU format."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def block(row, answer=True):
        q, a, b, c, d, gold = row
        return f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:" + (f" {gold}\n\n" if answer else "")

    with open(data / "mmlu" / "dev" / f"{subject}_dev.csv") as f:
        shots = "".join(block(r) for r in csv.reader(f))
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    out = []
    with open(data / "mmlu" / "test" / f"{subject}_test.csv") as f:
        for row in csv.reader(f):
            ctx = tok(header + shots + block(row, answer=False)).input_ids
            lls = []
            for letter in "ABCD":
                cont = tok(f" {letter}").input_ids
                with torch.no_grad():
                    logits = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
                lls.append(sum(logits[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
            out.append((lls, "ABCD".index(row[5])))
    return out


def test_multiple_choice_equals_transformers_loglikelihoods(setup, mmlu_run):
    report, stdout = mmlu_run
    expected = []
    for subject in MMLU_SUBJECTS:
        reference = independent_mmlu(setup.random, setup.data, subject)
        samples = sorted(report["samples"][f"qwen_mmlu_{subject}"], key=lambda s: s["doc_id"])
        assert len(samples) == len(reference) == 4
        for sample, (lls, gold) in zip(samples, reference):
            assert [r[0][0] for r in sample["resps"]] == pytest.approx(lls, abs=2e-3)
            expected.append(float(max(range(4), key=lls.__getitem__) == gold))
    assert len(set(expected)) == 2, "a test that cannot tell right from wrong answers"
    assert report["scores"]["mmlu"]["score"] == pytest.approx(100 * sum(expected) / len(expected))
    assert report["scores"]["mmlu"]["shots"] == 5
    assert re.search(r"^MMLU\s+5\s+\d+\.\d\s+-", stdout, re.M)  # a subject subset: no published number beside it


def test_score_equals_lm_eval_cli(setup, mmlu_run, tmp_path):
    """lm-eval's own command line on the same model, files and task configurations gives the same numbers."""
    include = write_task_configs(select([f"mmlu:{','.join(MMLU_SUBJECTS)}"]), str(setup.data), str(tmp_path / "t"),
                                 chat=False)
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                           f"pretrained={setup.random},dtype=auto", "--tasks", "qwen_mmlu", "--include_path", include,
                           "--batch_size", "4", "--device", "cpu", "--output_path", str(tmp_path / "cli")],
                          cwd=REPO, env=quiet_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result_file,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "cli") for f in files
                      if f.startswith("results")]
    cli = json.loads(open(result_file).read())
    ours = mmlu_run[0]["lm_eval"]
    assert cli["groups"]["qwen_mmlu"]["acc,none"] == ours["groups"]["qwen_mmlu"]["acc,none"]
    for subject in MMLU_SUBJECTS:
        assert cli["results"][f"qwen_mmlu_{subject}"]["acc,none"] == ours["results"][f"qwen_mmlu_{subject}"]["acc,none"]


def test_generation_and_sandboxed_code_from_our_checkpoint(setup):
    """--load of our checkpoint (exported on the fly): GSM8K's exact match equals the one counted by hand
    from transformers' greedy output, and HumanEval's sandbox passes one program and fails the endless loop,
    the network connection and the write outside its directory, with the run going on."""
    out = setup.root / "gen.json"
    proc = run_tool(["--load", setup.ours, "--data-dir", setup.data, "--tasks", "gsm8k", "humaneval",
                     "--allow-code-execution", "--code-timeout", 3, "--max-gen-toks", 3, "--output", out],
                    setup.root / "tmp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert [p for p in os.listdir(setup.root / "tmp") if p.startswith("megatron_qwen_eval_")] == []  # deleted
    tok = transformers.AutoTokenizer.from_pretrained(setup.random)
    model = transformers.AutoModelForCausalLM.from_pretrained(setup.root / "fives_src").eval()
    hits = []
    samples = [s for s in report["samples"]["qwen_gsm8k"] if s["filter"] == "flexible-extract"]  # the headline's
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        ids = tok(sample["arguments"][0][0], return_tensors="pt").input_ids
        new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=3)
        numbers = re.findall(r"-?\d+", tok.decode(new[0, ids.shape[1]:]))
        hits.append(float(bool(numbers) and numbers[-1] == GSM8K[sample["doc_id"]][1]))
    assert hits == [1.0, 0.0, 1.0, 0.0]
    assert report["scores"]["gsm8k"]["score"] == pytest.approx(50.0)
    passed = [s["pass_at_1"] for s in sorted(report["samples"]["qwen_humaneval"], key=lambda s: s["doc_id"])]
    assert passed == [1.0, 0.0, 0.0, 0.0]
    assert report["scores"]["humaneval"]["score"] == pytest.approx(25.0)
    assert os.listdir(setup.outside) == []


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
    ("unknown task", "--tasks mmmlu: unknown task"),
    ("no checkpoint", "does not exist"),
    ("code without flag", "add --allow-code-execution"),
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
    tasks = {"unknown task": ["mmmlu"], "code without flag": ["humaneval"]}.get(case, ["gsm8k"])
    load = tmp_path / "nowhere" if case == "no checkpoint" else model
    rc, err = main_in_process(["--load", load, "--data-dir", data, "--tasks", *tasks], capsys)
    assert rc == 2 and len(err) == 1 and expected in err[0], err


def test_curation_reads_the_same_data_dir(tmp_path):
    """--eval-data given an evaluation --data-dir indexes every benchmark file in it, as the evaluation reads it."""
    from megatron_qwen.curate.decont import EvalNgramIndexer

    data = tmp_path / "data"
    write_mmlu(data, ["anatomy"])
    write_jsonl(data / "gsm8k" / "test.jsonl", [{"question": q, "answer": a} for q, a in GSM8K])
    step = EvalNgramIndexer([str(data)], str(tmp_path / "index"), n=3)
    step.run()
    assert sorted(os.listdir(tmp_path / "index")) == ["gsm8k.index.hashes", "mmlu.index.hashes"]
    assert step.stats["samples_mmlu"].total == 9 and step.stats["samples_gsm8k"].total == len(GSM8K)
