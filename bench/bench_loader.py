"""What the shard checks cost: the loader's samples/s with and without the per-sample token-id check, and
the start-up checks (the whole-.idx check and the token-id scan) on a large index.

    python bench/bench_loader.py                 # figures: docs/data.md ("What the checks cost")
    python bench/bench_loader.py --json out.json

Loader: megatron-core's GPTDataset, ours (data/pretrain.py: CheckedGPTDataset, the same class with a
vectorised max of each sample's ids) and megatron-core's again (the noise floor), as one dataset object
whose class is switched, reading the same samples, one dataset[i] at a time and through the training
loader (training/batches.py); CPU time of the process (torch on one thread), the sides' order rotating
from round to round, the best of the rounds reported.
Start-up: shards.check_index and shards.find_token_id_outside on a shard of --index-sequences sequences
(a sparse .bin: its size is what the index describes). Never fails on a timing.
"""

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset

from megatron_qwen.data.pretrain import CheckedGPTDataset, build_pretrain_datasets
from megatron_qwen.data.shards import IndexedShardWriter, check_index, find_token_id_outside, index_bytes
from megatron_qwen.training.batches import microbatch_loader
from megatron_qwen.training.datasets import IdsOnlyVocab

SIDES = {"megatron-core GPTDataset": GPTDataset, "checked (ours)": CheckedGPTDataset,
         "megatron-core GPTDataset again": GPTDataset}  # the last: the measurement's noise floor


def loader_seconds(dataset, samples: int, micro_batch_size: int | None, round_: int) -> dict[str, float]:
    """CPU seconds of this process to read ``samples`` samples as each of SIDES (CPU time: what the read costs,
    not what other processes on the machine take from it): through the training loader (training/batches.py)
    in micro-batches of ``micro_batch_size``, or (None) one dataset[i] at a time. One dataset object serves
    every side, its class set to the side's for its block of reads (the same memory and caches); the order
    of the sides rotates with ``round_``."""
    times = {}
    names = list(SIDES)
    for name in names[round_ % len(names):] + names[:round_ % len(names)]:
        dataset.__class__ = SIDES[name]
        reads = ((dataset[i] for i in range(samples)) if micro_batch_size is None
                 else microbatch_loader(dataset, 0, samples, micro_batch_size, 0, 1))
        start = time.process_time()
        for _ in reads:
            pass
        times[name] = time.process_time() - start
    dataset.__class__ = CheckedGPTDataset
    return times


def build(prefix: str, seq_length: int, samples: int, cache: str):
    """The shard's training split, as training builds it."""
    vocab = IdsOnlyVocab(vocab_size=151_851, eod=151_643)
    train, _, _ = build_pretrain_datasets([prefix], "1,0,0", seq_length, 1, (samples, 0, 0), vocab, cache_path=cache)
    return train


def measure_loader(tokens: int, seq_length: int, samples: int, rounds: int, micro_batch_size: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"{tmp}/shard"
        rng = np.random.default_rng(0)
        lengths = rng.integers(200, 4000, size=tokens // 2000)
        with IndexedShardWriter(prefix, np.int32) as writer:
            writer.add_documents(rng.integers(0, 151_643, size=int(lengths.sum()), dtype=np.int32), lengths)
        dataset = build(prefix, seq_length, samples, f"{tmp}/cache")
        best = dict.fromkeys(SIDES, float("inf"))
        for r in range(rounds):
            for name, seconds in loader_seconds(dataset, samples, micro_batch_size, r).items():
                best[name] = min(best[name], seconds)
    return {name: {"seconds": s, "samples_per_s": samples / s} for name, s in best.items()}


def measure_startup(sequences: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"{tmp}/large"
        lengths = np.full(sequences, 1000, dtype=np.int64)
        with open(prefix + ".idx", "wb") as f:
            f.write(index_bytes(lengths, np.int32))
        with open(prefix + ".bin", "wb") as f:
            f.truncate(int(lengths.sum()) * 4)  # sparse: zeros, a valid token id
        times = {"check_index": float("inf"), "find_token_id_outside": float("inf")}
        for _ in range(rounds):
            for name, call in (("check_index", lambda: check_index(prefix)),
                               ("find_token_id_outside", lambda: find_token_id_outside(prefix, 151_851))):
                start = time.perf_counter()
                call()
                times[name] = min(times[name], time.perf_counter() - start)
    return {"sequences": sequences, "idx_bytes": 34 + 20 * sequences + 8, "seconds": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4_000_000, help="tokens of the loader's shard")
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--samples", type=int, default=1000, help="samples read per round")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--micro-batch-size", type=int, default=1, help="of the training loader")
    p.add_argument("--index-sequences", type=int, default=10_000_000, help="sequences of the start-up check's index")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the loader's stack and clone need no thread pool, whose spinning CPU time would count
    results = {}
    for path, mbs in (("dataset[i]", None), (f"training loader, micro-batch {args.micro_batch_size}",
                                              args.micro_batch_size)):
        results[path] = measure_loader(args.tokens, args.seq_length, args.samples, args.rounds, mbs)
        for name, r in results[path].items():
            print(f"{path}: {name:<26} {r['samples_per_s']:>8,.0f} samples per CPU second (best of {args.rounds} "
                  f"rounds of {args.samples} samples, seq {args.seq_length})")
        plain, checked, again = (r["seconds"] for r in results[path].values())
        for what, other in (("the check costs", checked), ("(noise: the same class again", again)):
            print(f"{path}: {what} {100 * (other / plain - 1):+.1f}% ({1e6 * (other - plain) / args.samples:+.1f} "
                  f"us a sample){')' if other is again else ''}")
    startup = measure_startup(args.index_sequences, args.rounds)
    for name, seconds in startup["seconds"].items():
        print(f"start-up {name:<22} {seconds:>8.3f} s for {startup['sequences']:,} sequences "
              f"({startup['idx_bytes'] / 2**20:,.0f} MiB .idx)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loader": results, "startup": startup, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
