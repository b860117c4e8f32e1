"""Bytes one transformer layer keeps for its backward pass, per token: eager layers against compiled ones
(--compile-layers), each beside the planner's estimate (planning/memory.py).

    python bench/bench_activations.py                          # 1.8B width, 2 layers, seq 128, bf16, sdpa
    python bench/bench_activations.py --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008

Every tensor autograd saves inside the layers is seen by a saved-tensor hook and counted once by its
storage; parameters are not activations and are left out. What a compiled layer keeps is decided by
torch.compile's partitioner, which recomputes cheap elementwise work in the backward instead of keeping
it: the same partitioner on the CPU as on a GPU, which is why this runs on the CPU. The eager figure
here is the CPU's layer (SwiGLU and RMSNorm unfused), and so is the planner's row beside it. Counted once,
the model's RoPE input, which every compiled layer keeps, is shared out over the layers.
"""

import argparse
import json
import sys

import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.config.run import RunConfig
from megatron_qwen.model.builder import build_model, unwrap, wrap_for_training
from megatron_qwen.planning.memory import Workload, layer_bytes_per_position, layer_bytes_per_token
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config

SHAPE = ["--model-size", "1.8b", "--num-layers", "2", "--vocab-size", "1024", "--seq-length", "128",
         "--micro-batch-size", "1", "--global-batch-size", "1", "--bf16", "--transformer-impl", "sdpa"]


def saved_bytes_per_token(flags: list[str], compiled: bool) -> tuple[float, RunConfig]:
    """Storage bytes the layers save for backward in one forward pass, per layer and token; the run's
    configuration."""
    cfg = parse_run_config(PRETRAIN, ["--mock-data", *flags])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    chunks = build_model(cfg.model, cfg.parallel, cfg.build)
    (model,) = wrap_for_training(chunks, cfg.parallel, False, compiled_layers=compiled)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    for layer in unwrap(model).decoder.layers:
        forward = layer.forward

        def counted(*args, _forward=forward, **kwargs):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                return _forward(*args, **kwargs)

        layer.forward = counted
    t = cfg.train
    tokens = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_length + 1),
                           generator=torch.Generator().manual_seed(0))
    positions = torch.arange(t.seq_length).expand(t.micro_batch_size, -1)
    loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:])
    loss.float().sum().backward()  # the compiled backward runs too: the saved tensors were usable
    per_token = sum(storages.values()) / cfg.model.num_layers / (t.seq_length * t.micro_batch_size)
    destroy_distributed()
    return per_token, cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args, flags = ap.parse_known_args(argv)
    flags = SHAPE + flags  # later flags override the default shape
    eager, cfg = saved_bytes_per_token(flags, compiled=False)
    compiled, _ = saved_bytes_per_token(flags, compiled=True)
    t = cfg.train

    def planned(compiled_layers: bool) -> float:
        work = Workload(cfg.model, t.seq_length, t.micro_batch_size, t.global_batch_size, cfg.build.precision,
                        cfg.build.transformer_impl, gpu=False, compiled_layers=compiled_layers)
        # the per-position terms (RoPE tables) spread over the micro-batch's sequences
        return layer_bytes_per_token(work, None) + layer_bytes_per_position(work, None) / t.micro_batch_size

    m = cfg.model
    result = {"hidden_size": m.hidden_size, "ffn_hidden_size": m.ffn_hidden_size, "heads": m.num_attention_heads,
              "seq_length": t.seq_length, "precision": cfg.build.precision, "backend": cfg.build.transformer_impl,
              "eager_bytes_per_token": eager, "compiled_bytes_per_token": compiled,
              "planner_eager_bytes_per_token": planned(False), "planner_compiled_bytes_per_token": planned(True)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"hidden {m.hidden_size}, FFN {m.ffn_hidden_size}, {m.num_attention_heads} heads, seq {t.seq_length}, "
          f"{cfg.build.precision}, {cfg.build.transformer_impl}: bytes one layer keeps per token")
    print(f"  eager layers:    {eager:,.0f} (the planner: {result['planner_eager_bytes_per_token']:,.0f})")
    print(f"  compiled layers: {compiled:,.0f}, {compiled / eager:.2f} of eager (the planner: "
          f"{result['planner_compiled_bytes_per_token']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
