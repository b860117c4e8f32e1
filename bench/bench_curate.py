"""Curation throughput: documents/s of each step of tools/curate.py's pipeline on this machine, and our
MinHash signatures (datatrove's permutations over our shingles) against datasketch's.

    python bench/bench_curate.py                 # 8,000 documents, one process per stage
    python bench/bench_curate.py --docs 2000     # a smoke run

The corpus is bench_preprocess.py's deterministic generator (code, English and Chinese prose, no
downloads) with 5% of the documents repeated in upper case (exact duplicates), 5% with one sentence
changed (near duplicates) and 5% wrapped in an HTML page (extraction); 20 of the 500 evaluation
questions quote a corpus document (contamination). Each step runs alone with the
local executor (--workers processes, --tasks tasks) and is timed by the wall clock, start-up included;
its rate is the documents it read per second. The MinHash part times signatures alone, in this
process, over the same documents, and compares both estimates of the Jaccard similarity with the
exact one on 200 planted pairs.
"""

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
from bench_preprocess import Corpus  # noqa: E402

from megatron_qwen.curate.fuzzy import FuzzySettings, MinhashSignature  # noqa: E402
from megatron_qwen.curate.pipeline import (  # noqa: E402
    STEPS,
    CurateConfig,
    ExecutorSettings,
    build_stages,
    make_executors,
    run,
    stage_stats,
    summary,
)
from megatron_qwen.curate.text import tokens  # noqa: E402


def make_corpus(folder: str, docs: int, seed: int = 7) -> tuple[list[str], str]:
    """Raw jsonl.gz (two files) with planted duplicates and HTML pages; and an evaluation set."""
    rng = random.Random(seed)
    corpus = Corpus(seed=seed, pool=5_000)
    texts = [corpus.document() for _ in range(docs)]
    records = []
    for i, text in enumerate(texts):
        kind = rng.random()
        if kind < 0.05 and i:
            text = texts[rng.randrange(i)].upper()
        elif kind < 0.10 and i:
            words = texts[rng.randrange(i)].split(" ")
            at = rng.randrange(len(words))
            text = " ".join(words[:at] + ["changed", "here"] + words[at + 1:])
        elif kind < 0.15:
            records.append({"html": f"<html><head><title>t</title></head><body><nav>Home | News | About</nav>"
                                    f"<article><p>{text}</p></article><footer>(c) site</footer></body></html>"})
            continue
        records.append({"text": text})
    os.makedirs(os.path.join(folder, "raw"), exist_ok=True)
    half = len(records) // 2
    for name, part in (("web", records[:half]), ("books", records[half:])):
        with gzip.open(os.path.join(folder, "raw", f"{name}.jsonl.gz"), "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    evals = os.path.join(folder, "eval.jsonl")
    with open(evals, "w") as f:  # 480 questions of random words, 20 that quote 20 words of a corpus document
        for i in range(500):
            words = texts[rng.randrange(len(texts))].split() if i < 20 else []
            at = rng.randrange(max(1, len(words) - 20))
            question = words[at:at + 20] if len(words) >= 20 else [f"q{rng.randrange(10**9)}" for _ in range(40)]
            f.write(json.dumps({"question": " ".join(question), "answer": "42"}, ensure_ascii=False) + "\n")
    return texts, evals


def bench_steps(folder: str, evals: str, workers: int, tasks: int) -> None:
    cfg = CurateConfig(inputs=[os.path.join(folder, "raw")], output=os.path.join(folder, "out"), eval_data=[evals],
                       upsample={"books": 2}, tasks=tasks)
    print(f"{'step':<10} {'docs in':>8} {'docs out':>9} {'seconds':>8} {'docs/s':>8}   stages")
    for step in STEPS:
        stages = build_stages(cfg, (step,))
        start = time.perf_counter()
        run(make_executors(stages, cfg.output, ExecutorSettings(workers=workers)))
        seconds = time.perf_counter() - start
        rows = summary(cfg.output, [s.name for s in stages])
        if rows:
            _, read, written, _ = rows[0]
        else:  # tokenize: documents in the shards
            documents = stage_stats(cfg.output, "tokenize")[0]["stats"]["documents"]
            read = written = int(documents["total"] if isinstance(documents, dict) else documents)
        print(f"{step:<10} {read:>8,} {written:>9,} {seconds:>8.2f} {read / seconds:>8,.0f}   "
              f"{', '.join(s.name for s in stages)}")


def bench_minhash(texts: list[str], seed: int = 3) -> None:
    try:
        # optional: datasketch is not in requirements.txt
        from datasketch import MinHash
    except ImportError:
        print("minhash vs datasketch: skipped, datasketch is not installed (pip install 'megatron-qwen[curate]')")
        return

    cfg = FuzzySettings()
    ours = MinhashSignature(tempfile.mkdtemp(), cfg)
    n = cfg.ngram
    start = time.perf_counter()
    for text in texts:
        shingles = ours.get_shingles(text)
        if shingles.size:
            ours.get_signature(shingles)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    for text in texts:
        words = tokens(text)
        m = MinHash(num_perm=cfg.num_perm, seed=seed)
        m.update_batch([" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)])
    theirs_s = time.perf_counter() - start
    print(f"\nMinHash signatures, {cfg.num_perm} permutations, {n}-token shingles, {len(texts):,} documents, "
          f"one thread:")
    print(f"  ours (datatrove's permutations, numpy): {len(texts) / ours_s:,.0f} docs/s")
    print(f"  datasketch MinHash.update_batch:        {len(texts) / theirs_s:,.0f} docs/s")
    rng = random.Random(seed)
    errors = {"ours": [], "datasketch": []}
    for _ in range(200):
        words = [f"w{rng.randrange(10**6)}" for _ in range(300)]
        cut = rng.randrange(5, 60)
        other = words[:100] + [f"x{rng.randrange(10**6)}" for _ in range(cut)] + words[100 + cut:]
        a, b = " ".join(words), " ".join(other)
        sa = {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}
        sb = {" ".join(other[i:i + n]) for i in range(len(other) - n + 1)}
        exact = len(sa & sb) / len(sa | sb)
        sig_a, sig_b = (np.concatenate(ours.get_signature(ours.get_shingles(t))) for t in (a, b))
        errors["ours"].append(abs(float(np.mean(sig_a == sig_b)) - exact))
        ma, mb = MinHash(num_perm=cfg.num_perm, seed=seed), MinHash(num_perm=cfg.num_perm, seed=seed)
        ma.update_batch([s.encode() for s in sa])
        mb.update_batch([s.encode() for s in sb])
        errors["datasketch"].append(abs(ma.jaccard(mb) - exact))
    for name, errs in errors.items():
        print(f"  {name:<11} Jaccard estimate, mean |error| over 200 pairs (J 0.4-0.9): {sum(errs) / len(errs):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="local executor processes per stage")
    p.add_argument("--tasks", type=int, default=2, help="tasks per stage")
    p.add_argument("--keep", default=None, help="keep the corpus and outputs in this folder")
    args = p.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="bench_curate_")
    try:
        texts, evals = make_corpus(folder, args.docs)
        print(f"corpus: {args.docs:,} documents, {sum(map(len, texts)) / 1e6:.1f} M characters; "
              f"workers {args.workers}, tasks {args.tasks}; load average {os.getloadavg()[0]:.2f}\n")
        bench_steps(folder, evals, args.workers, args.tasks)
        bench_minhash(texts[:2000])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
