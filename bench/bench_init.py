"""Start-up cost of layout-independent initialization: the time one rank spends drawing weights.

    python bench/bench_init.py                                  # 7B shapes, CPU draws (times: docs/PERFORMANCE.md)
    python bench/bench_init.py --model-size 72b --device cuda   # on a GPU

Every tensor-parallel rank draws each full weight and keeps its slice (model/init.py), so a rank's
cost does not shrink with TP: at TP=8 each of the 8 ranks pays for the whole model. This times
model/init.py's draw_full, one rank's cost, for every distinct tensor on --device: the embedding,
the output layer, the final norm and layer 0 (every layer has layer 0's shapes, so all layers cost
layer 0 times the layer count). The draw is what costs; slicing the rank's part and copying it
into the parameter is a memory copy of 1/TP of it and is not timed. Names and shapes come from the
model built on the meta device. Never fails on a timing.
"""

import argparse
import json
import sys
import time

import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_on_meta
from megatron_qwen.model.init import draw_full
from megatron_qwen.model.layout import LAYER_NAME, global_param_names
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config


def timed_draw(name: str, shape: list[int], cfg, seed: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    full = draw_full(name, shape, cfg, seed, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del full
    return time.perf_counter() - t0


def measure(model_size: str, device: torch.device, seed: int = 1234) -> dict:
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", model_size])
    init_distributed(cfg.parallel, cfg.model.num_layers, seed)
    (chunk,) = build_on_meta(cfg.model, cfg.parallel, cfg.build)
    names = global_param_names(chunk)
    params = [(names[n], list(p.shape)) for n, p in chunk.named_parameters()]
    destroy_distributed()
    if device.type == "cuda":  # the first CUDA call pays for context creation; keep it out of the figures
        draw_full("warm.weight", [1024, 1024], cfg.model, seed, device)
    groups = {"embedding": 0.0, "output layer": 0.0, "layer 0": 0.0, "final norm": 0.0}
    for name, shape in params:
        m = LAYER_NAME.match(name)
        if m and m.group(1) != "0":
            continue
        key = ("layer 0" if m else "embedding" if name.startswith("embedding")
               else "output layer" if name.startswith("output_layer") else "final norm")
        groups[key] += timed_draw(name, shape, cfg.model, seed, device)
    layers = cfg.model.num_layers
    total = groups["embedding"] + groups["output layer"] + groups["final norm"] + layers * groups["layer 0"]
    return {"model_size": model_size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "parameters": sum(torch.Size(s).numel() for _, s in params), "num_layers": layers,
            "seconds": groups, "total_s_per_rank": total, "torch": torch.__version__}


def report(r: dict) -> str:
    g = r["seconds"]
    return (f"{r['model_size']} ({r['parameters'] / 1e9:.3f}B parameters), draws on {r['device_name']}: "
            f"embedding {g['embedding']:.2f} s, output layer {g['output layer']:.2f} s, layer 0 {g['layer 0']:.3f} s "
            f"(x {r['num_layers']} layers = {g['layer 0'] * r['num_layers']:.2f} s), final norm "
            f"{g['final norm']:.4f} s -> {r['total_s_per_rank']:.2f} s per rank at any TP size (TP=8 included)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-size", default="7b")
    ap.add_argument("--device", default="cpu", help="cpu (the CPU path) or cuda (the GPU path)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_init: no CUDA device here; the GPU path runs only on a GPU", file=sys.stderr)
        return 2
    result = measure(args.model_size, device)
    print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
