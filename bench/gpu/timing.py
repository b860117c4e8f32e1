"""The micro-benchmarks' clock (bench/gpu/bench_loss.py, bench/gpu/bench_rope.py)."""

import time

import torch


def median_ms(step, reps: int, warmup: int, cuda: bool) -> tuple[float, int]:
    """Median milliseconds of ``step()`` over ``reps`` calls after ``warmup`` (CUDA events on a GPU, the wall
    clock on the CPU), and the peak bytes the last call allocated above what was allocated before it (0 on
    the CPU)."""
    times, peak = [], 0
    for i in range(warmup + reps):
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        step()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return sorted(times)[len(times) // 2], peak
