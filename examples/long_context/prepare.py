"""Data for the Table-3 experiment (docs/long_context.md): Python standard-library files, a held-out
set of whole long files, tokenized with Qwen's tokenizer, then renumbered onto the training text's
most frequent ids so that a 2-core CPU trains a model that uses its attention within the hour.

Why renumber: with Qwen's 151,936-row vocabulary the output layer and softmax are over 95% of a tiny
model's work; a model trained that way for 20 CPU minutes stayed near a unigram model (perplexity
~740) and barely used positions, so it could show nothing about RoPE past the training length.
Ids outside the kept set become one "other" id (the last); the held-out text uses the training map.

    python examples/long_context/prepare.py --out runs/long_context --vocab 8192
"""

import argparse
import json
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

from megatron_qwen.data.shards import token_dtype

REPO = Path(__file__).resolve().parents[2]
HELDOUT_CHARS, MIN_HELDOUT_FILE_CHARS = 1_500_000, 20_000


def stdlib_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(stdlib.rglob("*.py"))
             if p.relative_to(stdlib).parts[0] not in ("site-packages", "test", "idlelib", "lib2to3")
             and "tests" not in p.relative_to(stdlib).parts]
    random.Random(1234).shuffle(paths)
    return paths


def write_corpus(out: Path) -> None:
    """heldout.jsonl: whole files of at least 20,000 characters until 1.5M characters; train.jsonl: the rest."""
    out.mkdir(parents=True, exist_ok=True)
    held = 0
    with open(out / "train.jsonl", "w") as train, open(out / "heldout.jsonl", "w") as heldout:
        for path in stdlib_files():
            text = path.read_text(encoding="utf-8", errors="replace")
            take = held < HELDOUT_CHARS and len(text) >= MIN_HELDOUT_FILE_CHARS
            held += len(text) if take else 0
            (heldout if take else train).write(json.dumps({"text": text}) + "\n")


def renumber(prefix: Path, out_prefix: Path, keep: np.ndarray) -> tuple[float, int]:
    """Copy a shard with each id replaced by its rank in ``keep`` (others: len(keep)); returns the share of
    tokens that became the "other" id, and the token count. The .idx is unchanged (same lengths, same dtype)."""
    idx = Path(str(prefix) + ".idx").read_bytes()
    dtype = token_dtype(str(prefix))
    tokens = np.fromfile(str(prefix) + ".bin", dtype=dtype)
    table = np.full(int(tokens.max()) + 1, len(keep), dtype=np.int64)
    known = keep[keep < len(table)]
    table[known] = np.nonzero(keep < len(table))[0]
    mapped = table[tokens].astype(dtype)
    mapped.tofile(str(out_prefix) + ".bin")
    Path(str(out_prefix) + ".idx").write_bytes(idx)
    return float((mapped == len(keep)).mean()), len(mapped)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/long_context"))
    ap.add_argument("--vocab", type=int, default=4096, help="ids kept: the most frequent vocab - 1, plus 'other'")
    a = ap.parse_args()
    corpus, qwen, data = a.out / "corpus", a.out / "qwen_ids", a.out / "data"
    write_corpus(corpus)
    for d in (qwen, data):
        d.mkdir(parents=True, exist_ok=True)
    for name in ("train", "heldout"):
        subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input",
                        str(corpus / f"{name}.jsonl"), "--append-eod", "--output-prefix", str(qwen / name),
                        "--log-interval", "0"], check=True)
    prefix = qwen / "train_text_document"
    dtype = token_dtype(str(prefix))
    counts = np.bincount(np.fromfile(str(prefix) + ".bin", dtype=dtype))
    keep = np.argsort(-counts, kind="stable")[: a.vocab - 1]
    report = {"kept_ids": a.vocab - 1, "distinct_ids_in_train": int((counts > 0).sum())}
    for name in ("train", "heldout"):
        report[f"other_share_{name}"], report[f"tokens_{name}"] = renumber(qwen / f"{name}_text_document",
                                                                          data / name, keep)
    np.save(a.out / "kept_qwen_ids.npy", keep)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
