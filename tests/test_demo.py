"""The built-in demo (examples/demo): its arithmetic data, its corpus, and a --quick end-to-end run."""

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo"
sys.path.insert(0, str(DEMO))

import arithmetic  # noqa: E402
import corpus  # noqa: E402

QUESTION = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")
RERECORD = ("the demo's figures changed: run python examples/demo/run_demo.py --record and --quick --record, "
            "paste examples/demo/figures.txt into README.md's demo block, and commit the two figures files")


def test_every_answer_is_right():
    problems = arithmetic.all_problems()
    assert len(problems) == len(set(problems)) > 1000
    for p in problems:
        conv = p.conversation()["messages"]
        assert [m["role"] for m in conv] == ["user", "assistant"]
        a, op, b = QUESTION.fullmatch(conv[0]["content"]).groups()
        # recomputed from the question's text, independently of the generator's operator table
        assert int(conv[1]["content"]) == eval(f"{int(a)} {op} {int(b)}")
        assert int(conv[1]["content"]) >= 0


def test_heldout_problems_are_never_trained_on(tmp_path):
    train, heldout = arithmetic.split_problems(50, seed=7)
    assert len(heldout) == 50 and not set(train) & set(heldout)
    assert len(train) + len(heldout) == len(arithmetic.all_problems())
    arithmetic.write_conversations(heldout, tmp_path / "heldout.jsonl")
    pairs = arithmetic.read_conversations(tmp_path / "heldout.jsonl")
    assert pairs == [(p.question, p.answer) for p in heldout]


def test_corpus_has_nonempty_documents_from_the_stated_sources(tmp_path):
    summary = corpus.build_corpus(tmp_path, code_chars=100_000)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = {name: [json.loads(line) for line in open(s["path"], encoding="utf-8")] for name, s in summary.items()}
    for name, records in docs.items():
        assert records and all(r["text"].strip() for r in records), name
        assert summary[name]["documents"] == len(records)
    assert {r["source"].split(":")[0] for r in docs["code"]} == {"python-stdlib"}
    assert sum(len(r["text"]) for r in docs["code"]) >= 100_000
    for r in docs["code"]:
        assert (stdlib / r["source"].split(":", 1)[1]).is_file()
    text_sources = {r["source"].split(":")[0] for r in docs["text"]}
    assert {"python-docs", "python-license"} <= text_sources
    if (corpus.FORTUNES_DIR / "tang300").is_file():
        poems = [r["text"] for r in docs["text"] if r["source"].startswith("debian-fortunes-zh:")]
        assert len(poems) > 300 and all(re.search(r"[\u4e00-\u9fff]", p) for p in poems)
        assert not any("\x1b" in p for p in poems)


def test_chinese_poems_are_split_and_uncoloured(tmp_path):
    (tmp_path / "tang300").write_text("\x1b[32m《静夜思》\x1b[m\n作者：李白\n床前明月光\n%\n《春晓》\n春眠不觉晓\n%\n",
                                      encoding="utf-8")
    docs = corpus.chinese_documents(tmp_path)
    assert [d.text for d in docs] == ["《静夜思》\n作者：李白\n床前明月光", "《春晓》\n春眠不觉晓"]
    assert corpus.chinese_documents(tmp_path / "absent") == []


def test_split_paragraphs_keeps_all_text():
    text = "\n\n".join(f"paragraph {i} " + "x" * 50 for i in range(40))
    pieces = corpus.split_paragraphs(text, limit=300)
    assert len(pieces) > 5 and all(len(p) <= 300 for p in pieces)
    assert "\n\n".join(pieces) == text


def test_quick_demo_end_to_end(tmp_path):
    """Every stage at a few steps: the commands, files and checkpoints fit together, and the figures are those
    the same quick run recorded (examples/demo/figures-quick.txt, every digit of the losses): a change of the
    numerics fails here until the demo is rerun and its figures committed."""
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "examples/demo/run_demo.py"), "--quick",
                             "--workdir", str(workdir)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    for stage in ("pretrain", "code", "sft"):
        assert summary["validation_loss"][stage], f"no validation loss recorded for {stage}"
    assert (workdir / "metrics.png").read_bytes().startswith(b"\x89PNG")
    figures = (workdir / "figures.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in figures] == [line.split(" ")[0] for line in readme_demo_block()]
    assert figures[-1].startswith("held-out arithmetic, GSM8K chat protocol (Qwen's) accuracy")
    harness = json.loads((workdir / "eval_after_sft.json.harness.json").read_text())  # tools/evaluate.py's report
    assert harness["scores"]["gsm8k"]["score"] == pytest.approx(100 * summary["accuracy"]["after_sft"])
    assert all(line in result.stdout for line in figures) and str(workdir / "metrics.png") in result.stdout
    recorded = (DEMO / "figures-quick.txt").read_text().splitlines()
    if figures[0] != recorded[0]:  # the environment line: the corpus and the arithmetic depend on it
        pytest.skip(f"figures-quick.txt was recorded on {recorded[0]!r}, this machine is {figures[0]!r}")
    assert figures == recorded, RERECORD


def readme_demo_block() -> list[str]:
    """The figures README.md quotes from a full demo run (the first code block after "run_demo.py --record`")."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index("python examples/demo/run_demo.py --record`"):]
    return after.split("```\n", 2)[1].strip().splitlines()


def test_readme_quotes_the_recorded_demo_run():
    """A full run (python examples/demo/run_demo.py --record) writes examples/demo/figures.txt; README.md quotes it."""
    assert readme_demo_block() == (DEMO / "figures.txt").read_text().strip().splitlines(), RERECORD
