"""Where one training step's time goes, kernel by kernel: torch.profiler around one step of bench_train's session.

    python bench/gpu/profile_step.py OUT.txt [bench_train flags...]    # e.g. --model-size 1.8b --bf16 ...

Runs two untimed steps (allocator growth, compilation), then profiles one step and writes: the step's
wall time, the GPU's busy time (the union of its kernels' intervals: less than the wall time when the
GPU waits for the host to launch work), and the operators and kernels ranked by their own GPU time.
"""

import sys

import torch
from bench_train import build_session
from torch.profiler import ProfilerActivity, profile

from megatron_qwen.platform.distributed import destroy_distributed, on_gpu


def busy_seconds(events) -> float:
    """Seconds in which at least one GPU kernel ran (overlapping kernels counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for s, e in spans:
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy / 1e6


def main() -> int:
    out, flags = sys.argv[1], sys.argv[2:]
    session = build_session(flags, steps=3)
    for _ in range(2):
        session.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu() else [])
    with profile(activities=activities) as prof:
        _, seconds, _ = session.step()
    sort = "self_cuda_time_total" if on_gpu() else "self_cpu_time_total"
    lines = [f"flags: {' '.join(flags)}", f"step wall time: {seconds * 1e3:.1f} ms"]
    if on_gpu():
        lines.append(f"GPU busy (kernels running): {busy_seconds(prof.events()) * 1e3:.1f} ms")
    lines.append(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70))
    text = "\n".join(lines)
    print(text)
    with open(out, "w") as f:
        f.write(text + "\n")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
