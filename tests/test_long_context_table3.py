"""Table 3 reproduced (examples/long_context): the data its script prepares, the table it writes, and
docs/long_context.md quoting the table the script recorded."""

import os
import subprocess
import sys
from collections import Counter

import numpy as np
from conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "long_context"))

from markdown_table import markdown_table  # noqa: E402

RECORDED = REPO / "examples" / "long_context" / "table3.md"


def test_table3_data_is_renumbered_by_training_frequency(tmp_path):
    # examples/long_context/prepare.py: the kept ids are the training text's most frequent, ranked by count;
    # the held-out text uses the training map; everything else is the one "other" id; the .idx files stay.
    vocab = 512
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "long_context", "prepare.py"), "--out",
                           str(tmp_path), "--vocab", str(vocab)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = {line for line in open(tmp_path / "corpus" / "heldout.jsonl")}
    assert held and not held & set(open(tmp_path / "corpus" / "train.jsonl"))
    other, rank_of = vocab - 1, {}
    for name in ("train", "heldout"):
        qwen = np.fromfile(tmp_path / "qwen_ids" / f"{name}_text_document.bin", dtype=np.int32)
        ours = np.fromfile(tmp_path / "data" / f"{name}.bin", dtype=np.int32)
        assert (tmp_path / "data" / f"{name}.idx").read_bytes() == \
            (tmp_path / "qwen_ids" / f"{name}_text_document.idx").read_bytes()
        assert len(ours) == len(qwen) and ours.min() >= 0 and ours.max() == other
        if name == "train":
            counts = Counter(qwen.tolist())
            rank_of = {q: int(m) for q, m in zip(qwen.tolist(), ours.tolist()) if m != other}
            assert sorted(rank_of.values()) == list(range(other))  # one id per rank
            by_rank = [counts[q] for q, _ in sorted(rank_of.items(), key=lambda kv: kv[1])]
            assert by_rank == sorted(by_rank, reverse=True)  # ranked by training count
            assert min(by_rank) >= max(c for q, c in counts.items() if q not in rank_of)  # the most frequent kept
        assert all(m == rank_of.get(q, other) for q, m in zip(qwen.tolist(), ours.tolist()))


def test_markdown_table_of_the_json():
    result = {"train_length": 128, "lengths": [128, 256],
              "perplexity": {"none": {"128": 8.594, "256": 9.3049}, "+ window": {"128": 8.594, "256": 8.5151}}}
    assert markdown_table(result) == ("| technique | 128 (1x) | 256 (2x) |\n"
                                      "| --- | --- | --- |\n"
                                      "| none | 8.59 | 9.30 |\n"
                                      "| + window | 8.59 | 8.52 |\n")


def test_docs_quote_the_recorded_table():
    """bash examples/long_context/table3.sh writes table3.md; docs/long_context.md must carry it unchanged."""
    assert RECORDED.exists(), "no examples/long_context/table3.md: run bash examples/long_context/table3.sh"
    docs = (REPO / "docs" / "long_context.md").read_text(encoding="utf-8")
    assert RECORDED.read_text(encoding="utf-8") in docs, (
        "docs/long_context.md does not quote examples/long_context/table3.md: after rerunning "
        "bash examples/long_context/table3.sh, paste the file into the docs and commit both")
