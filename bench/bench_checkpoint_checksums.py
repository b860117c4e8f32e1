"""What checksums cost a checkpoint: the save of a large state with and without them, and their verification.

    python bench/bench_checkpoint_checksums.py --size-gib 4 --rounds 3

One process saves the same state (fp32 tensors of 64 MiB, --size-gib in all) through megatron-core's
dist_checkpointing, alternately:
  checksums  checkpointing/saving.py's save_sharded (each shard hashed with xxh3-128 as it is written) and
             the manifest (the digests gathered; the small files megatron-core writes itself read once)
  plain      dist_checkpointing.save and a manifest of sizes only (the format before checksums)
each into a fresh directory under --workdir, fsynced as megatron-core does, after one untimed save: the
best wall time of --rounds, and the median CPU time (user + system, the writer processes included), which
the neighbours of a shared machine disturb less. Then it times
the verification a --load does (integrity.damage, every file read and hashed; from the page cache here, so
it is the hashing cost; from a cold disk it is one more read of the checkpoint, shared among the ranks).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor

from megatron_qwen.checkpointing.integrity import damage, write_manifest
from megatron_qwen.checkpointing.saving import save_sharded
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed

GIB = 2**30


def tensors(size_gib: float) -> dict[str, torch.Tensor]:
    numel = 16 * 2**20  # 64 MiB of fp32 each
    g = torch.Generator().manual_seed(0)
    return {f"weight_{i}": torch.randn(numel, generator=g) for i in range(max(1, round(size_gib * GIB / (4 * numel))))}


def sharded(state: dict[str, torch.Tensor]) -> dict:
    """The tensors as megatron-core's sharded state, in fresh objects for each save (a save annotates them)."""
    return {name: ShardedTensor.from_rank_offsets(name, t) for name, t in state.items()}


def save_with_checksums(state: dict, directory: str) -> None:
    save_sharded(state, directory, {}, asynchronous=False)
    write_manifest(directory)


def save_plain(state: dict, directory: str) -> None:
    dist_checkpointing.save(state, directory)
    sizes = {name: os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(sizes, f)
        f.flush()
        os.fsync(f.fileno())


def _cpu_seconds() -> float:
    """User + system time of this process and of its children reaped so far (megatron-core's writers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed(fn, state: dict, directory: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one save: the CPU time does not wait for the neighbours' processes."""
    os.makedirs(directory)
    start, cpu = time.perf_counter(), _cpu_seconds()
    fn(state, directory)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gib", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temporary dir)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="bench_checksums_", dir=args.workdir)
    init_distributed(ParallelSettings(), 1, 0)
    try:
        state = tensors(args.size_gib)
        size = sum(t.numel() * 4 for t in state.values())
        times, cpu = {"checksums": [], "plain": []}, {"checksums": [], "plain": []}
        timed(save_with_checksums, sharded(state), os.path.join(work, "warmup"))  # first-save costs, untimed
        shutil.rmtree(os.path.join(work, "warmup"))
        for r in range(args.rounds):
            for name, fn in (("plain", save_plain), ("checksums", save_with_checksums)):
                directory = os.path.join(work, f"{name}_{r}")
                wall, used = timed(fn, sharded(state), directory)
                times[name].append(wall)
                cpu[name].append(used)
                if not (name == "checksums" and r == args.rounds - 1):
                    shutil.rmtree(directory)
        verify_dir = os.path.join(work, f"checksums_{args.rounds - 1}")
        start = time.perf_counter()
        assert damage(verify_dir, verify=lambda name: True) is None
        verify = time.perf_counter() - start
    finally:
        destroy_distributed()
        shutil.rmtree(work, ignore_errors=True)
    best = {name: min(t) for name, t in times.items()}
    median_cpu = {name: statistics.median(c) for name, c in cpu.items()}
    result = {"bytes": size, "rounds": args.rounds, "save_s": times, "save_cpu_s": cpu, "best_save_s": best,
              "median_cpu_s": median_cpu, "overhead_percent": 100 * (best["checksums"] / best["plain"] - 1),
              "cpu_overhead_percent": 100 * (median_cpu["checksums"] / median_cpu["plain"] - 1),
              "verify_s": verify, "verify_gb_per_s": size / verify / 1e9}
    print(f"state {size / GIB:.2f} GiB, best of {args.rounds}: save {best['plain']:.2f} s plain, "
          f"{best['checksums']:.2f} s with checksums ({result['overhead_percent']:+.1f}%); median CPU time "
          f"{median_cpu['plain']:.2f} s and {median_cpu['checksums']:.2f} s ({result['cpu_overhead_percent']:+.1f}%); "
          f"verification {verify:.2f} s ({result['verify_gb_per_s']:.2f} GB/s, page cache)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
