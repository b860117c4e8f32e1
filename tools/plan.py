"""Memory and layout planner: which TP/PP/DP/CP, ZeRO-1 and recompute layouts fit a Qwen model on N GPUs,
their memory per GPU, and an estimated step time to rank them (formulas and assumptions: docs/planning.md;
the library: megatron_qwen/planning/).

    python tools/plan.py --model-size 7b --seq-length 2048 --num-gpus 8
    python tools/plan.py --model-size 72b --num-gpus 64 --micro-batch-size 1 --top 10

The step time is a ranking heuristic, not a prediction. Exit status: 0 when some layout fits, 1 when none
does, 2 for flags that cannot be planned.
"""

import argparse
import dataclasses
import sys

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import NON_NEGATIVE, POSITIVE, Bounds, bounded
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.config.run import RunConfig
from megatron_qwen.planning.hardware import Cluster
from megatron_qwen.planning.memory import COMPILED_LAYER_BACKENDS, GIB, Layout, Workload, stage_parameters
from megatron_qwen.planning.search import Plan, pareto_front, plan
from megatron_qwen.planning.zero_memory import zero_suffix
from megatron_qwen.platform.backends import BACKEND_FLAGS
from megatron_qwen.training.arguments import parse_run_config

SHAPE_FLAGS = ("--num-layers", "--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--vocab-size")


COUNT, AMOUNT = bounded(int, POSITIVE), bounded(float, POSITIVE)  # argparse types: declared bounds (config/flags.py)


class PlanError(Exception):
    """Flags that cannot be planned; the message names the flag."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model (Megatron-LM's flags; shapes resolve as in training)")
    g.add_argument("--model-size", default=None,
                   help="preset: 1.8b, 7b, 14b, 72b, tiny, tiny-qwen-vocab; without it pass every shape flag")
    for flag in (*SHAPE_FLAGS, "--kv-channels"):
        g.add_argument(flag, type=COUNT, default=None, help="override the preset")
    g.add_argument("--make-vocab-size-divisible-by", type=COUNT, default=128,
                   help="with --vocab-size: pad the vocabulary rows to a multiple of this")
    g.add_argument("--transformer-impl", choices=list(BACKEND_FLAGS), default="transformer_engine",
                   help="the layer back end of the GPU run (what --transformer-impl auto picks with TE installed)")
    g.add_argument("--fp32", action="store_true", help="plan an fp32 run instead of bf16 mixed precision")
    g.add_argument("--no-cross-entropy-fusion", dest="cross_entropy_fusion", action="store_false",
                   help="plan megatron-core's loss (fp32 softmax kept for every token) instead of the chunked one")
    g.add_argument("--compile-layers", action="store_true",
                   help="plan compiled layers (sdpa or flash back end): what torch.compile keeps for the backward, "
                        "as bench/bench_activations.py measures it")

    g = p.add_argument_group("batch")
    g.add_argument("--seq-length", type=COUNT, default=PRETRAIN.seq_length)
    g.add_argument("--micro-batch-size", type=COUNT, default=PRETRAIN.micro_batch_size)
    g.add_argument("--global-batch-size", type=COUNT, default=None,
                   help=f"sequences per step (pretraining recipe: 2048 for the published sizes, else "
                        f"{PRETRAIN.global_batch_size})")

    g = p.add_argument_group("cluster")
    g.add_argument("--num-gpus", type=COUNT, default=8)
    g.add_argument("--gpu-memory-gb", type=AMOUNT, default=80.0, help="memory per GPU, GiB")
    g.add_argument("--headroom", type=bounded(float, Bounds(low=0, high=1, high_open=True)), default=0.10,
                   help="fraction of GPU memory kept free for the CUDA context, NCCL buffers and fragmentation")
    g.add_argument("--gpus-per-node", type=COUNT, default=Cluster.gpus_per_node)
    g.add_argument("--cpu-memory-gb", type=AMOUNT, default=1024.0,
                   help="CPU memory per node, GiB, for DeepSpeed's offloaded state (the same headroom kept free)")
    g.add_argument("--achievable-tflops", type=AMOUNT, default=Cluster.achievable_tflops,
                   help="bf16 dense TFLOP/s one GPU sustains on the model's matmuls (H100 peak 989: ~40%%)")
    g.add_argument("--intra-node-bandwidth", type=AMOUNT, default=Cluster.intra_node_gbs,
                   help="GB/s per GPU that collectives reach inside a node (NVLink)")
    g.add_argument("--inter-node-bandwidth", type=AMOUNT, default=Cluster.inter_node_gbs,
                   help="GB/s per GPU between nodes (one 400 Gb/s InfiniBand rail per GPU)")
    g.add_argument("--zero-engine", choices=["megatron", "deepspeed", "both"], default="both",
                   help="which data-parallel engines to plan: megatron-core's (ZeRO-0/1, any layout) and DeepSpeed's "
                        "(ZeRO-1/2/3 with optimizer and parameter offload, TP x DP)")
    g.add_argument("--all", action="store_true",
                   help="list every layout that fits, not only those no other layout beats on both time and memory")
    g.add_argument("--top", type=bounded(int, NON_NEGATIVE), default=20,
                   help="show at most this many layouts (0: no limit)")
    return p


def resolve(args: argparse.Namespace) -> tuple[RunConfig, Workload]:
    """The model and batch the flags describe, resolved by the training parser itself."""
    if args.model_size is None:
        missing = [f for f in SHAPE_FLAGS if getattr(args, f[2:].replace("-", "_")) is None]
        if missing:
            raise PlanError(f"pass --model-size or every shape flag; missing {' '.join(missing)}")
    flags = ["--mock-data", "--model-size", args.model_size or "tiny", "--seq-length", str(args.seq_length),
             "--micro-batch-size", str(args.micro_batch_size),
             "--make-vocab-size-divisible-by", str(args.make_vocab_size_divisible_by)]
    for flag in (*SHAPE_FLAGS, "--kv-channels", "--global-batch-size"):
        value = getattr(args, flag[2:].replace("-", "_"))
        flags += [flag, str(value)] if value is not None else []
    cfg = parse_run_config(PRETRAIN, flags)
    # Memory does not depend on the RoPE table's length: plan any length, as --max-position-embeddings allows.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, max_position_embeddings=max(cfg.model.max_position_embeddings, args.seq_length)))
    t = cfg.train
    if t.global_batch_size % t.micro_batch_size != 0:
        raise PlanError(f"--global-batch-size {t.global_batch_size} is not a multiple of --micro-batch-size "
                        f"{t.micro_batch_size}")
    backend = BACKEND_FLAGS[args.transformer_impl]
    if args.compile_layers and backend not in COMPILED_LAYER_BACKENDS:
        raise PlanError(f"--compile-layers is planned for the sdpa and flash back ends, not --transformer-impl "
                        f"{args.transformer_impl}: pass --transformer-impl sdpa")
    cfg = dataclasses.replace(cfg, build=dataclasses.replace(
        cfg.build, transformer_impl=backend, precision="fp32" if args.fp32 else "bf16"))
    cfg.validate(world_size=1)  # the rules that do not involve the layout, with training's own messages
    work = Workload(cfg.model, t.seq_length, t.micro_batch_size, t.global_batch_size,
                    precision=cfg.build.precision, backend=backend, chunked_loss=args.cross_entropy_fusion,
                    compiled_layers=args.compile_layers)
    return cfg, work


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _zero_name(layout: Layout) -> str:
    """megatron engine: "no" / "yes" (its ZeRO-1); DeepSpeed: "ds1"-"ds3", "+o" / "+op" for offload."""
    if layout.deepspeed_stage:
        return f"ds{layout.deepspeed_stage}{zero_suffix(layout)}"
    return "yes" if layout.distributed_optimizer else "no"


def format_table(plans: list[Plan], work: Workload) -> list[str]:
    header = (f"{'#':>3}  {'TP':>2} {'PP':>2} {'VP':>2} {'CP':>2} {'DP':>3} {'ZeRO':<6} {'recompute':<9} {'micro':>5}  "
              f"{'params':>6} {'grads':>6} {'optim':>6} {'activ':>6} {'total':>6} {'cpu':>6}  {'stage':<5}  "
              f"{'step s':>7} {'bubble':>6} {'comm':>5}")
    lines = [header, "-" * len(header)]
    for i, p in enumerate(plans, 1):
        lay, m, t = p.layout, p.memory, p.time
        num_mb = work.global_batch_size // (work.micro_batch_size * lay.dp)
        lines.append(f"{i:>3}  {lay.tp:>2} {lay.pp:>2} {lay.vp:>2} {lay.cp:>2} {lay.dp:>3} "
                     f"{_zero_name(lay):<6} {lay.recompute or 'none':<9} {num_mb:>5}  "
                     f"{_gib(m.parameters):>6} {_gib(m.gradients):>6} {_gib(m.optimizer):>6} {_gib(m.activations):>6} "
                     f"{_gib(m.total):>6} {_gib(m.cpu):>6}  {m.stage:<5}  {t.total:>7.2f} {t.bubble / t.total:>6.1%} "
                     f"{t.communication / t.total:>5.1%}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, work = resolve(args)
    except (PlanError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cluster = Cluster(achievable_tflops=args.achievable_tflops, gpus_per_node=args.gpus_per_node,
                      intra_node_gbs=args.intra_node_bandwidth, inter_node_gbs=args.inter_node_bandwidth)
    plans = plan(cfg, work, args.num_gpus, cluster, args.zero_engine)
    if not plans:
        print(f"error: no TP x PP x CP x DP split of --num-gpus {args.num_gpus} suits {cfg.model.num_layers} layers, "
              f"{cfg.model.num_attention_heads} heads and --global-batch-size {work.global_batch_size} / "
              f"--micro-batch-size {work.micro_batch_size}; change one of them", file=sys.stderr)
        return 2
    usable = args.gpu_memory_gb * GIB * (1 - args.headroom)
    host = args.cpu_memory_gb * GIB * (1 - args.headroom) / min(args.gpus_per_node, args.num_gpus)  # per GPU
    fitting = [p for p in plans if p.memory.total <= usable and p.memory.cpu <= host]
    m = cfg.model
    params = stage_parameters(m, Layout(), "only")
    print(f"model: {args.model_size or 'custom shape'}, {params / 1e9:.3f}B parameters (hidden {m.hidden_size}, "
          f"{m.num_layers} layers, {m.num_attention_heads} heads, FFN {m.ffn_hidden_size}, "
          f"{m.padded_vocab_size:,} vocabulary rows)")
    print(f"batch: seq {work.seq_length}, micro-batch {work.micro_batch_size}, global batch {work.global_batch_size} "
          f"({work.global_batch_size * work.seq_length / 1e6:.2f}M tokens per step), {work.precision}, "
          f"{args.transformer_impl} back end")
    print(f"cluster: {args.num_gpus} GPUs x {args.gpu_memory_gb:g} GiB, {args.headroom:.0%} headroom: "
          f"{usable / GIB:.1f} GiB usable; {args.achievable_tflops:g} TFLOP/s per GPU, {args.gpus_per_node} GPUs "
          f"per node, {args.intra_node_bandwidth:g} / {args.inter_node_bandwidth:g} GB/s within / between nodes")
    if not fitting:
        on_gpu = [p for p in plans if p.memory.total <= usable]
        if on_gpu:  # only DeepSpeed's offload fits the GPUs, and its state does not fit the host
            least = min(on_gpu, key=lambda p: p.memory.cpu)
            print(f"no layout fits: those that fit in {usable / GIB:.1f} GiB per GPU offload to CPU memory, the least "
                  f"{_gib(least.memory.cpu)} GiB per GPU ({least.layout.describe()}), more than --cpu-memory-gb "
                  f"{args.cpu_memory_gb:g} allows; add GPUs or CPU memory")
            return 1
        least = min(plans, key=lambda p: p.memory.total)
        print(f"no layout fits in {usable / GIB:.1f} GiB: the least memory is {_gib(least.memory.total)} GiB "
              f"({least.layout.describe()}); add GPUs or shorten --micro-batch-size or --seq-length")
        return 1
    listed = fitting if args.all else pareto_front(fitting)
    shown = listed[:args.top] if args.top else listed
    which = "" if args.all else ", those no other layout beats on both step time and memory"
    print(f"{len(fitting)} of {len(plans)} valid layouts fit{which}: {len(shown)} shown, fastest first by estimated "
          f"step time (a ranking heuristic, not a prediction). GiB on the most loaded GPU; cpu: CPU memory per GPU "
          f"(DeepSpeed offload, not in total); micro: micro-batches per step per pipeline; ZeRO: no/yes megatron "
          f"engine, dsN DeepSpeed stage N, +o optimizer offload, +op optimizer and parameter offload")
    print("\n".join(format_table(shown, work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
