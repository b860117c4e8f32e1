"""What DeepSpeed's own Adam costs to build and gains per step against torch's AdamW.

    python bench/bench_deepspeed_adam.py                     # CPU: DeepSpeedCPUAdam, 100M parameters, all cores
    python bench/bench_deepspeed_adam.py --params 20000000 --threads 2
    python bench/bench_deepspeed_adam.py --device cuda       # a GPU: DeepSpeed's FusedAdam

The state is what the deepspeed engine hands its optimizer: flat fp32 master partitions with their gradients
(on the CPU: what --zero-offload-optimizer cpu keeps there), one per megatron-core parameter group (decay 99%,
no decay 1%). DeepSpeed's extension (cpu_adam on the CPU, fused_adam on a GPU) is built in a fresh directory
(TORCH_EXTENSIONS_DIR), so the time is the first-use cost a new machine pays; DeepSpeed caches the result
(~/.cache/torch_extensions by default). Each optimizer then takes --steps steps after one warm-up step; the
median is reported, with the largest difference from torch's AdamW (foreach) in the updated weights. Prints
the JSON first, then one line per optimizer. Never fails on a timing.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch


def groups(n: int, device: str, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, wd in ((n - n // 100, 0.1), (n // 100, 0.0)):
        p = torch.nn.Parameter((torch.randn(size, generator=g) * 0.02).to(device))
        p.grad = (torch.randn(size, generator=g) * 1e-3).to(device)
        out.append({"params": [p], "weight_decay": wd})
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(make, n: int, steps: int, device: str) -> tuple[float, torch.Tensor]:
    params = groups(n, device)
    opt = make(params)
    opt.step()  # warm-up: the state is allocated here
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cat([g["params"][0].detach().cpu() for g in params])


def _build(device: str) -> tuple[str, float | None, str | None]:
    """DeepSpeed's optimizer for the device, built now: (its name, seconds, None) or (name, None, why not)."""
    # after TORCH_EXTENSIONS_DIR is set: the build is what is measured
    from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder

    name, builder = ("DeepSpeedCPUAdam", CPUAdamBuilder()) if device == "cpu" else ("DeepSpeed FusedAdam",
                                                                                     FusedAdamBuilder())
    start = time.monotonic()
    try:
        builder.load(verbose=False)
    except Exception as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        return name, None, f"{type(e).__name__}: {lines[-1].strip()}"
    return name, round(time.monotonic() - start, 1), None


def measure(params: int, steps: int, device: str, build: bool = True) -> dict:
    """The figures as a dict (the JSON this script prints; bench/gpu/check_deepspeed.py reports it too)."""
    hyper = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}
    candidates = {"torch AdamW (foreach)": lambda p: torch.optim.AdamW(p, **hyper),
                  "torch AdamW (fused)": lambda p: torch.optim.AdamW(p, fused=True, **hyper)}
    name, build_s, build_error = None, None, "skipped"
    with tempfile.TemporaryDirectory() as ext_dir:
        os.environ["TORCH_EXTENSIONS_DIR"] = ext_dir
        if build:
            name, build_s, build_error = _build(device)
        if build_s is not None:
            # after TORCH_EXTENSIONS_DIR is set: the build is what is measured
            from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

            candidates[name] = ((lambda p: DeepSpeedCPUAdam(p, adamw_mode=True, **hyper)) if device == "cpu"
                                else (lambda p: FusedAdam(p, adam_w_mode=True, **hyper)))
        results, reference = {}, None
        for label, make in candidates.items():
            step_s, weights = time_steps(make, params, steps, device)
            reference = weights if reference is None else reference
            results[label] = {"step_s": round(step_s, 4),
                              "max_abs_diff_vs_foreach": float((weights - reference).abs().max())}
    return {"device": device, "params": params, "threads": torch.get_num_threads(), "steps": steps,
            "deepspeed_optimizer": name, "build_s": build_s, "build_error": build_error, "optimizers": results}


def describe(r: dict) -> list[str]:
    built = (f"{r['build_s']} s (first use)" if r["build_error"] is None
             else "skipped" if r["build_error"] == "skipped" else f"failed ({r['build_error']})")
    lines = [f"{r['params']:,} fp32 parameters on the {r['device']}, {r['threads']} threads; "
             f"{r['deepspeed_optimizer'] or 'DeepSpeed Adam'} build: {built}"]
    lines += [f"  {name:<24} {x['step_s'] * 1000:9.1f} ms/step   max |w - foreach| {x['max_abs_diff_vs_foreach']:.2e}"
              for name, x in r["optimizers"].items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=100_000_000, help="parameters (fp32 master copy)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--no-build", dest="build", action="store_false", help="torch's AdamW only")
    a = ap.parse_args(argv)
    if a.params < 100 or a.steps < 1 or a.threads < 1:
        print("bench_deepspeed_adam: --params must be at least 100, --steps and --threads at least 1",
              file=sys.stderr)
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_deepspeed_adam: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    report = measure(a.params, a.steps, a.device, a.build)
    print(json.dumps(report))
    print("\n".join(describe(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
