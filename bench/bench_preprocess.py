"""Preprocessing throughput: tools/preprocess_data.py, timed from outside, against the raw tokenizer.

    python bench/bench_preprocess.py            # corpus of 100 and 200 MB, best of 3 rounds
    python bench/bench_preprocess.py --quick    # 20 and 40 MB, best of 2 rounds: a smoke run, a rough figure
    python bench/bench_preprocess.py --stages   # where the time goes: CPU seconds of each stage alone

Builds a deterministic jsonl corpus (no downloads): Python standard-library source as code, English
prose drawn from the stdlib's word frequencies, Chinese prose from 500 common characters; and its
first half as a second file. Then, in rounds, it times on both files:
  raw:    tiktoken's encode_ordinary_batch (--raw-threads threads, 1000 texts at a time) over the
          texts already in memory, in this process; no NFC check, no parsing, no writing
  tool:   `python tools/preprocess_data.py --input FILE --output-prefix ... --append-eod` as its own
          process, wall-clock: once with `--workers 2` (Megatron-LM users' habit) and once with the defaults
Every rate is a steady state, (tokens of the full corpus - tokens of its half) / (best time on the
full corpus - best time on the half), so start-up (imports, loading the tokenizer, filling the
pipeline) cancels. Best of the rounds, because other jobs may share the CPUs: a single round on a
shared machine says more about the neighbours than about the code. Never fails on timing.
"""

import argparse
import glob
import itertools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import unicodedata

from megatron_qwen.data.preprocess import BlockEncoder, PreprocessSettings
from megatron_qwen.data.shards import IndexedShardWriter, read_index_counts
from megatron_qwen.data.sources import parse_block, read_blocks
from megatron_qwen.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 500 common Chinese characters; prose is drawn from them with punctuation every few characters.
CHINESE = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
    "十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全"
    "表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象"
    "员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据"
    "处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车"
)


class Corpus:
    """Deterministic documents: 40% code, 35% English, 25% Chinese (by document). Prose documents are
    drawn from pools of generated sentences, which keeps generating 200 MB to a minute or so."""

    def __init__(self, seed: int = 1234, pool: int = 50_000):
        self.rng = rng = random.Random(seed)
        stdlib = sysconfig.get_paths()["stdlib"]
        self.code_files = sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True))
        self.code: dict[str, str] = {}
        counts: dict[str, int] = {}
        for path in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:200]:
            for token in self._read(path).split():
                if token.isalpha() and token.islower() and 2 <= len(token) <= 12:
                    counts[token] = counts.get(token, 0) + 1
        words = sorted(counts)  # a natural, Zipf-like mix of words
        cum_weights = list(itertools.accumulate(counts[w] for w in words))
        self.sentences = [" ".join(rng.choices(words, cum_weights=cum_weights, k=rng.randint(5, 25))).capitalize()
                          + rng.choice(".?!,.") for _ in range(pool)]
        self.phrases = ["".join(rng.choices(CHINESE, k=rng.randint(4, 18))) + rng.choice("，。，、；！？")
                        for _ in range(pool)]

    def _read(self, path: str) -> str:
        if path not in self.code:
            with open(path, encoding="utf-8", errors="replace") as f:
                self.code[path] = f.read()
        return self.code[path]

    def document(self) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.4:  # NFC, as nearly all real text; then both sides must give the same token count
            return unicodedata.normalize("NFC", self._read(rng.choice(self.code_files))[: rng.randint(2_000, 40_000)])
        if kind < 0.75:
            return " ".join(rng.choices(self.sentences, k=rng.randint(10, 200)))
        return "".join(rng.choices(self.phrases, k=rng.randint(20, 400)))

    def write(self, path: str, megabytes: float) -> int:
        """About `megabytes` MB of jsonl lines {"text": ...}; returns the document count."""
        written = docs = 0
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            while written < megabytes * 1e6:
                text = self.document()
                if text:
                    line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                    out.write(line)
                    written += len(line.encode("utf-8"))
                    docs += 1
        os.replace(path + ".tmp", path)
        return docs


def make_corpora(workdir: str, megabytes: float) -> tuple[str, str]:
    """(half, full): a corpus of 2 x megabytes MB and its leading lines of about megabytes MB (kept for reruns)."""
    full = os.path.join(workdir, f"corpus_{2 * megabytes:g}mb.jsonl")
    half = os.path.join(workdir, f"corpus_{2 * megabytes:g}mb_first_half.jsonl")
    if not os.path.exists(full):
        Corpus().write(full, 2 * megabytes)
    if not os.path.exists(half):
        with open(full, "rb") as f, open(half + ".tmp", "wb") as out:
            size = 0
            for line in f:
                if size >= megabytes * 1e6:
                    break
                out.write(line)
                size += len(line)
        os.replace(half + ".tmp", half)
    return half, full


def time_raw(tokenizer, texts: list[str], threads: int) -> tuple[int, float]:
    """Tokens and seconds of encode_ordinary_batch over `texts`, 1000 at a time (all ids of 200 MB
    as Python ints at once would be memory, not tokenizer, speed)."""
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1000):
        tokens += sum(map(len, tokenizer.encoding.encode_ordinary_batch(texts[i:i + 1000], num_threads=threads)))
    return tokens, time.perf_counter() - start


def time_tool(corpus: str, out_dir: str, flags: list[str]) -> tuple[int, float]:
    """Tokens written (without the EODs) and wall-clock seconds of the tool as a separate process."""
    shutil.rmtree(out_dir, ignore_errors=True)  # complete shards would be skipped
    prefix = os.path.join(out_dir, "bench")
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", corpus,
           "--output-prefix", prefix, "--append-eod", "--log-interval", "0", *flags]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bench_preprocess: {' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    documents, tokens = read_index_counts(prefix + "_text_document")
    shutil.rmtree(out_dir)
    return tokens - documents, seconds


def steady_rate(tokens: dict[str, int], seconds: dict[str, list[float]]) -> float | None:
    """None when the full corpus was not timed slower than its half: the load changed too much."""
    extra = min(seconds["full"]) - min(seconds["half"])
    return (tokens["full"] - tokens["half"]) / extra if extra > 0 else None


def profile_stages(tokenizer, corpus: str, rounds: int) -> None:
    """CPU seconds of each stage of the tool's pipeline alone, one thread, best of `rounds`."""
    opts = PreprocessSettings(keys=("text",), append_eod=True, threads=1)
    encoder = BlockEncoder(tokenizer, opts)
    blocks = list(read_blocks(corpus, ["text"]))
    texts = [r[0] for b in blocks for r in parse_block(b, encoder.check).records]
    encoded = [encoder(b) for b in blocks]
    out = os.path.join(os.path.dirname(corpus), "stage_out")

    def write() -> None:
        with IndexedShardWriter(out) as writer:
            for e in encoded:
                writer.add_documents(*e.outputs[0])

    stages = {
        "read, decompress, cut whole lines": lambda: list(read_blocks(corpus, ["text"])),
        "orjson parse + record check": lambda: [parse_block(b, encoder.check) for b in blocks],
        "NFC check (unicodedata.is_normalized)": lambda: [unicodedata.is_normalized("NFC", t) for t in texts],
        "tiktoken encode_to_numpy (the tool's encoding)":
            lambda: [tokenizer.encoding.encode_to_numpy(t, disallowed_special=()) for t in texts],
        "concatenate + write .bin": write,
        "transfer: pickle a block and its tokens both ways": lambda: [pickle.loads(pickle.dumps((b, e)))
                                                                     for b, e in zip(blocks, encoded)],
        "raw tokenizer's encode_ordinary (builds Python ints)":
            lambda: [tokenizer.encoding.encode_ordinary(t) for t in texts],
    }
    best = {name: float("inf") for name in stages}
    for _ in range(rounds):
        for name, stage in stages.items():
            start = time.process_time()
            stage()
            best[name] = min(best[name], time.process_time() - start)
    raw = best["raw tokenizer's encode_ordinary (builds Python ints)"]
    tokens = sum(e.tokens - e.documents for e in encoded)
    print(f"\nstages on {corpus} ({tokens:,} tokens), CPU seconds, one thread, best of {rounds}:")
    for name, seconds in best.items():
        print(f"  {name:<54} {seconds:7.3f} s  {100 * seconds / raw:5.1f}% of raw encode_ordinary")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 and 40 MB, 2 rounds")
    parser.add_argument("--mb", type=float, default=None, help="size of the half corpus in MB (default 100; quick 20)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, best of which counts (default 3; quick 2)")
    parser.add_argument("--raw-threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="encode_ordinary_batch threads (default: the usable CPUs)")
    parser.add_argument("--tokenizer-model", default=None)
    parser.add_argument("--workdir", default=None, help="keep the corpus here (reused when present)")
    parser.add_argument("--stages", action="store_true",
                        help="instead: the CPU time of each pipeline stage alone, on the half corpus")
    return parser.parse_args()


def time_rounds(tokenizer, corpora: dict, sides: dict, rounds: int, raw_threads: int, out_dir: str):
    """Tokens and seconds of every side on both corpora ({"half"|"full": (path, texts)}), per round;
    ``sides``: name -> the tool's flags, None for the raw tokenizer."""
    tokens: dict[str, dict[str, int]] = {side: {} for side in sides}
    seconds: dict[str, dict[str, list[float]]] = {side: {"half": [], "full": []} for side in sides}
    for round_ in range(1, rounds + 1):
        # Both sides in every round, seconds apart, so a change of load hits both.
        for side, flags in sides.items():
            for size, (path, size_texts) in corpora.items():
                if flags is None:
                    n, s = time_raw(tokenizer, size_texts, raw_threads)
                else:
                    n, s = time_tool(path, out_dir, flags)
                tokens[side][size] = n
                seconds[side][size].append(s)
            print(f"round {round_}: {side}: half {seconds[side]['half'][-1]:.2f} s, "
                  f"full {seconds[side]['full'][-1]:.2f} s", flush=True)
    return tokens, seconds


def report_rates(tokens: dict, seconds: dict, raw_side: str, rounds: int, half: str, full: str) -> None:
    """Each side's steady-state rate, and its ratio to the raw tokenizer's."""
    for side in tokens:
        if tokens[side] != tokens[raw_side]:
            print(f"WARNING: {side} gave {tokens[side]} tokens, the raw tokenizer {tokens[raw_side]}")
    raw_rate = steady_rate(tokens[raw_side], seconds[raw_side])
    print(f"\nsteady state, best of {rounds} rounds: {tokens[raw_side]['full'] - tokens[raw_side]['half']:,} tokens "
          f"({(os.path.getsize(full) - os.path.getsize(half)) / 1e6:.1f} MB) between the two files; "
          f"load average {os.getloadavg()[0]:.2f}")
    for side in tokens:
        rate = steady_rate(tokens[side], seconds[side])
        if rate is None:
            print(f"  {side:<52} no figure: the full corpus was not slower than its half (rerun on a quieter machine)")
            continue
        ratio = "" if side == raw_side or not raw_rate else f"  {rate / raw_rate:.2f} of raw (target >= 0.85)"
        print(f"  {side:<52} {rate / 1e6:6.2f}M tokens/s{ratio}")


def main() -> None:
    args = parse_args()
    megabytes = args.mb or (20 if args.quick else 100)
    rounds = args.rounds or (2 if args.quick else 3)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_")
    os.makedirs(workdir, exist_ok=True)

    half, full = make_corpora(workdir, megabytes)
    tokenizer = load_tokenizer(args.tokenizer_model)
    if args.stages:
        profile_stages(tokenizer, half, rounds)
        return
    with open(full, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with open(half, "rb") as f:
        n_half = sum(1 for _ in f)
    raw_side = f"raw tokenizer (encode_ordinary_batch, {args.raw_threads} threads)"
    tokenizer_flag = ["--tokenizer-model", args.tokenizer_model] if args.tokenizer_model else []
    sides = {raw_side: None, "tools/preprocess_data.py --workers 2": ["--workers", "2", *tokenizer_flag],
             "tools/preprocess_data.py (defaults)": tokenizer_flag}
    print(f"corpus: {full} ({os.path.getsize(full) / 1e6:.1f} MB, {len(texts):,} documents) and its first half "
          f"({os.path.getsize(half) / 1e6:.1f} MB, {n_half:,}); {len(os.sched_getaffinity(0))} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    corpora = {"half": (half, texts[:n_half]), "full": (full, texts)}
    tokens, seconds = time_rounds(tokenizer, corpora, sides, rounds, args.raw_threads, os.path.join(workdir, "out"))
    report_rates(tokens, seconds, raw_side, rounds, half, full)


if __name__ == "__main__":
    main()
