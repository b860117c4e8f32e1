"""Preprocessing throughput: our tool vs the raw tokenizer vs a Megatron-LM-style pool.

    python bench/bench_preprocess.py [--mb 100] [--threads 2] [--peer-mb 20]

Builds a deterministic mixed corpus (Python stdlib source as code, generated English prose,
generated Chinese prose) as jsonl, then measures on it, in this one process and run:
  raw:  tiktoken encode_ordinary_batch(1000 texts, num_threads), over the texts already in memory
  tool: megatron_qwen's preprocessing (read, orjson parse, encode, write .bin/.idx), tokenizer loaded;
        also on the corpus cut into 2 x threads files, as `threads` processes of one thread each
  peer: Megatron-LM's scheme, multiprocessing.Pool(threads) doing json.loads + encode per line,
        written with IndexedDatasetBuilder.add_document (on the first --peer-mb MB, it is slow)
Raw and tool alternate for --rounds rounds; prints every round, the median tool/raw ratio and
the peer figure. Never fails on timing.
"""

import argparse
import glob
import json
import multiprocessing
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

from megatron_qwen.data.preprocess import Options, plan_shards, run_shards  # noqa: E402
from megatron_qwen.tokenizer import load_tokenizer  # noqa: E402

# 300 common Chinese characters; prose is drawn from them with punctuation every few characters.
CHINESE = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
    "十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全"
    "表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象"
    "员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据"
    "处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车"
)


def english_words() -> tuple[list[str], list[int]]:
    """Words of the stdlib's comments and docstrings with their counts (a natural, Zipf-like mix)."""
    counts: dict[str, int] = {}
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:200]:
        with open(path, encoding="utf-8", errors="ignore") as f:
            for token in f.read().split():
                if token.isalpha() and token.islower() and 2 <= len(token) <= 12:
                    counts[token] = counts.get(token, 0) + 1
    words = sorted(counts)
    return words, [counts[w] for w in words]


def make_corpus(path: str, megabytes: float, seed: int = 1234) -> int:
    """Write a jsonl corpus of about `megabytes` MB; returns the document count."""
    rng = random.Random(seed)
    words, weights = english_words()
    code_files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    written, docs, target = 0, 0, int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            kind = rng.random()
            if kind < 0.4:
                with open(rng.choice(code_files), encoding="utf-8", errors="replace") as f:
                    text = f.read()[: rng.randint(2_000, 40_000)]
            elif kind < 0.75:
                sentences = []
                for _ in range(rng.randint(10, 200)):
                    s = " ".join(rng.choices(words, weights, k=rng.randint(5, 25)))
                    sentences.append(s.capitalize() + rng.choice([".", ".", "?", "!", ","]))
                text = " ".join(sentences)
            else:
                parts = []
                for _ in range(rng.randint(20, 400)):
                    parts.append("".join(rng.choice(CHINESE) for _ in range(rng.randint(4, 18))) + rng.choice("，。，、；！？"))
                text = "".join(parts)
            if not text:
                continue
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            docs += 1
    return docs


_peer_tokenizer = None


def _peer_init(tokenizer_model):
    global _peer_tokenizer
    _peer_tokenizer = load_tokenizer(tokenizer_model)


def _peer_encode(line: str):
    ids = _peer_tokenizer.tokenize(json.loads(line)["text"]) + [_peer_tokenizer.eod]
    return ids, len(line)


def run_peer(corpus: str, out_prefix: str, workers: int, megabytes: float, tokenizer_model) -> tuple[int, float]:
    lines, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            size += len(line)
            if size > megabytes * 1e6:
                break
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(out_prefix + ".bin", dtype=np.int32)
    tokens = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_peer_init, initargs=(tokenizer_model,)) as pool:
        init_done = time.perf_counter()
        for ids, _ in pool.imap(_peer_encode, lines, 32):
            builder.add_document(torch.tensor(ids, dtype=torch.int32), [len(ids)])
            tokens += len(ids)
    builder.finalize(out_prefix + ".idx")
    # Tokenizer loading in the pool is start-up cost, excluded as for the tool.
    return tokens, time.perf_counter() - start - (init_done - start)


def split_corpus(corpus: str, parts: int) -> list[str]:
    """The corpus cut into `parts` jsonl files of whole lines (written once, next to it)."""
    paths = [f"{corpus[:-len('.jsonl')]}_part{i}.jsonl" for i in range(parts)]
    if not all(os.path.exists(p) for p in paths):
        with open(corpus, "rb") as f:
            lines = f.readlines()
        step = -(-len(lines) // parts)
        for i, path in enumerate(paths):
            with open(path, "wb") as out:
                out.writelines(lines[i * step:(i + 1) * step])
    return paths


def raw_encode(tokenizer, texts: list[str], threads: int) -> tuple[int, float]:
    """Tokens and seconds of tiktoken's encode_ordinary_batch over `texts`, 1000 at a time
    (holding every token of 100 MB as a Python int at once would dominate the time)."""
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1000):
        tokens += sum(map(len, tokenizer.encoding.encode_ordinary_batch(texts[i:i + 1000], num_threads=threads)))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100, help="corpus size in MB")
    parser.add_argument("--peer-mb", type=float, default=20, help="MB of the corpus given to the Megatron-style peer (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="tokenizer threads (and peer processes)")
    parser.add_argument("--rounds", type=int, default=3, help="raw-then-tool rounds; the median ratio is reported")
    parser.add_argument("--tokenizer-model", default=None)
    parser.add_argument("--workdir", default=None, help="keep the corpus and outputs here")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_")
    os.makedirs(workdir, exist_ok=True)
    corpus = os.path.join(workdir, f"corpus_{args.mb:g}mb.jsonl")
    if not os.path.exists(corpus):
        make_corpus(corpus, args.mb)
    tokenizer = load_tokenizer(args.tokenizer_model, num_threads=args.threads)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    size_mb = os.path.getsize(corpus) / 1e6
    print(f"corpus: {corpus}: {size_mb:.1f} MB, {len(texts):,} documents; {os.cpu_count()} CPUs, {args.threads} threads")

    tokenizer.encoding.encode_ordinary_batch(texts[:200], num_threads=args.threads)  # warm-up
    opts = Options(keys=("text",), append_eod=True, threads=args.threads)
    tasks = plan_shards([corpus], os.path.join(workdir, "out", "bench"), opts)
    ratios, tool_rates = [], []
    # Rounds of raw-then-tool, so each ratio compares runs seconds apart (a shared machine drifts).
    for round_ in range(1, args.rounds + 1):
        raw_tokens, raw_s = raw_encode(tokenizer, texts, args.threads)
        raw_rate = raw_tokens / raw_s
        for prefix in tasks[0].prefixes:
            for ext in (".bin", ".idx"):
                if os.path.exists(prefix + ext):
                    os.remove(prefix + ext)
        start = time.perf_counter()
        result = run_shards(tasks, opts, tokenizer, workers=1, log_interval=0)
        tool_s = time.perf_counter() - start
        tool_tokens = result.stats.tokens - result.stats.documents  # without the appended EODs
        tool_rate = tool_tokens / tool_s
        ratios.append(tool_rate / raw_rate)
        tool_rates.append(tool_rate)
        print(f"round {round_}: raw {raw_rate / 1e6:.2f}M tokens/s ({raw_s:.2f} s) | tool {tool_rate / 1e6:.2f}M tokens/s "
              f"({tool_s:.2f} s, {size_mb / tool_s:.1f} MB/s, {result.stats.documents / tool_s:,.0f} docs/s) | "
              f"tool/raw {tool_rate / raw_rate:.3f}")
        if tool_tokens != raw_tokens:
            print(f"WARNING: tool wrote {tool_tokens:,} tokens, raw encoding gave {raw_tokens:,}")
    # The same corpus as several files: one shard each, `threads` processes of one encoding thread.
    parts = split_corpus(corpus, 2 * args.threads)
    part_tasks = plan_shards(parts, os.path.join(workdir, "out", "parts", "bench"), opts)
    for task in part_tasks:
        for ext in (".bin", ".idx"):
            if os.path.exists(task.prefixes[0] + ext):
                os.remove(task.prefixes[0] + ext)
    start = time.perf_counter()
    part_result = run_shards(part_tasks, Options(keys=("text",), append_eod=True, threads=1), tokenizer,
                             workers=args.threads, log_interval=0)
    part_s = time.perf_counter() - start
    print(f"tool, {len(parts)} files, {args.threads} processes x 1 thread: "
          f"{(part_result.stats.tokens - part_result.stats.documents) / part_s / 1e6:.2f}M tokens/s ({part_s:.2f} s)")
    print(f"tokens: {raw_tokens:,}; tool / raw median {statistics.median(ratios):.3f} (target >= 0.85), "
          f"median tool {statistics.median(tool_rates) / 1e6:.2f}M tokens/s")
    del texts
    tool_rate = statistics.median(tool_rates)

    if args.peer_mb > 0:
        peer_tokens, peer_s = run_peer(corpus, os.path.join(workdir, "out", "peer"), args.threads,
                                       args.peer_mb, args.tokenizer_model)
        peer_rate = peer_tokens / peer_s
        print(f"megatron-style : {peer_tokens:,} tokens in {peer_s:.2f} s = {peer_rate / 1e6:.2f}M tokens/s "
              f"({args.threads} processes, first {args.peer_mb:g} MB)")
        print(f"tool (median) / peer: {tool_rate / peer_rate:.2f}x")


if __name__ == "__main__":
    main()
