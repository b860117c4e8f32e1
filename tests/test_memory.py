"""The memory estimator (megatron_qwen/planning/memory.py) against memory measured in real training steps on the
CPU, and its DeepSpeed states (planning/zero_memory.py) against DeepSpeed's own estimators. The planner's command
line built on it: tests/test_plan.py.

The measurement is independent of the estimator: parameters, gradients and optimizer state are the summed
storages of the model's parameters, their main_grad buffers and the optimizer's tensors; activations are
the peak, during the second training step, of every other live tensor storage (a TorchDispatchMode sees
each tensor an operation creates; a storage counts until it is freed). Run as a script (also under
torchrun), this file is the measuring worker: ``python tests/test_memory.py OUT_DIR '[[FLAGS...], ...]'``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env, torchrun
from megatron.core import parallel_state
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_on_meta, unwrap
from megatron_qwen.planning.memory import Layout, StageMemory, Workload, chunks_in_flight, estimate, stage_parameters
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import train_step

MIB = 2**20
TOLERANCE = 0.15
# The brief's tiny Qwen: hidden 128, 4 heads, 4 layers, FFN 352, vocabulary 1024, sequence 128, micro-batch 2.
TINY = ["--model-size", "tiny", "--hidden-size", "128", "--ffn-hidden-size", "352", "--seq-length", "128",
        "--micro-batch-size", "2"]
SINGLE_PROCESS = {
    "fp32 local": ["--global-batch-size", "2"],
    "fp32 local selective": ["--global-batch-size", "2", "--recompute-granularity", "selective"],
    "fp32 local full": ["--global-batch-size", "2", "--recompute-granularity", "full"],
    "bf16 local": ["--global-batch-size", "2", "--bf16"],
    "bf16 local full": ["--global-batch-size", "2", "--bf16", "--recompute-granularity", "full"],
    "bf16 sdpa": ["--global-batch-size", "2", "--bf16", "--transformer-impl", "sdpa"],
    # a vocabulary large enough for the loss to set the peak: the chunked loss, then megatron-core's
    "bf16 local vocab 16k": ["--global-batch-size", "2", "--bf16", "--vocab-size", "16384"],
    "bf16 local vocab 16k mcore": ["--global-batch-size", "2", "--bf16", "--vocab-size", "16384",
                                   "--no-cross-entropy-fusion"],
}
# Four ranks: TP2 with sequence parallelism x PP2 interleaved (one layer per chunk), 4 micro-batches.
MULTI_PROCESS = {
    "fp32 local TP2 SP PP2 VP2": ["--global-batch-size", "8", "--tensor-model-parallel-size", "2",
                                  "--sequence-parallel", "--pipeline-model-parallel-size", "2",
                                  "--num-layers-per-virtual-pipeline-stage", "1"],
}


# ---------------------------------------------------------------------------------------------- the worker


class LiveStorages(TorchDispatchMode):
    """Bytes of the tensor storages created by operations and not yet freed, and their peak."""

    def __init__(self, ignore: set[int]):
        super().__init__()
        self.ignore = ignore  # storages counted elsewhere (parameters, gradients, optimizer state)
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def forget(self, keys: set[int]) -> None:
        """Count these storages elsewhere from now on."""
        self.ignore |= keys
        for key in keys:
            self.refs.pop(key, None)

    def live_bytes(self) -> int:
        for key in [k for k, (ref, _) in self.refs.items() if ref.expired()]:
            del self.refs[key]
        return sum(n for _, n in self.refs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                known = self.refs.get(ref.cdata)
                if ref.cdata not in self.ignore and (known is None or known[0].expired()):
                    self.refs[ref.cdata] = (ref, storage.nbytes())
        self.peak = max(self.peak, self.live_bytes())
        return out


def _storages(tensors) -> dict[int, int]:
    return {StorageWeakRef(t.untyped_storage()).cdata: t.untyped_storage().nbytes() for t in tensors}


def measure(flags: list[str]) -> dict:
    """Two training steps of the configuration ``flags`` on this rank; the second one is measured."""
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--train-iters", "2", "--lr-warmup-iters", "0", *flags])
    t, world = cfg.train, int(os.environ.get("WORLD_SIZE", "1"))
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    model, optimizer, scheduler = build_model_and_optimizer(cfg)
    params = [p for chunk in model for p in unwrap(chunk).parameters()]
    buffers = [b for chunk in model for b in unwrap(chunk).buffers()]
    generator = torch.Generator().manual_seed(0)
    s, b, num_mb = t.seq_length, t.micro_batch_size, cfg.num_microbatches(world)

    def step():
        tokens = torch.randint(0, cfg.model.vocab_size, (num_mb, b, s + 1), generator=generator)
        batches = [{"tokens": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous(), "loss_mask": torch.ones(b, s),
                    "position_ids": torch.arange(s).expand(b, s).contiguous(), "attention_mask": None}
                   for x in tokens]
        train_step(model, optimizer, scheduler, [iter(batches) for _ in model], num_mb, s, b, t.global_batch_size,
                   torch.device("cpu"))

    # The first step creates Adam's state; tensors it leaves behind (such as the local back end's score
    # buffer) count as activations of the measured second step.
    tracker = LiveStorages(ignore=set(_storages(params + buffers + [p.main_grad for p in params])))
    with tracker:
        step()
    weights, grads = _storages(params), _storages([p.main_grad for p in params])
    state = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        state += [p for group in inner.optimizer.param_groups for p in group["params"]]
        state += [v for st in inner.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    opt = {k: n for k, n in _storages(state).items() if k not in weights and k not in grads}
    tracker.forget(set(opt))
    tracker.peak = tracker.live_bytes()
    with tracker:
        step()
    result = dict(flags=flags, rank=torch.distributed.get_rank(),
                  pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                  num_params=sum(p.numel() for p in params), parameters=sum(weights.values()),
                  gradients=sum(grads.values()), optimizer=sum(opt.values()), activations=tracker.peak)
    destroy_distributed()
    return result


# ---------------------------------------------------------------------------------------------- the comparison


def workload_and_layout(flags: list[str], world: int) -> tuple[Workload, Layout]:
    """What the training flags describe, in the estimator's terms, for the CPU (unfused kernels)."""
    cfg = parse_run_config(PRETRAIN, ["--mock-data", *flags])
    p, L = cfg.parallel, cfg.model.num_layers
    work = Workload(cfg.model, cfg.train.seq_length, cfg.train.micro_batch_size, cfg.train.global_batch_size,
                    precision=cfg.build.precision, backend=cfg.build.transformer_impl, gpu=False,
                    chunked_loss=cfg.build.cross_entropy_fusion)
    layout = Layout(tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                    dp=p.data_parallel_size(world), cp=p.context_parallel_size,
                    vp=p.virtual_pipeline_size(L) or 1, distributed_optimizer=cfg.zero.distributed_optimizer,
                    recompute=cfg.build.recompute_granularity)
    return work, layout


def stage_name(layout: Layout, pp_rank: int) -> str:
    return "only" if layout.pp == 1 else "first" if pp_rank == 0 else "last"


def estimated(flags: list[str], world: int, pp_rank: int) -> StageMemory:
    work, layout = workload_and_layout(flags, world)
    return {s.stage: s for s in estimate(work, layout)}[stage_name(layout, pp_rank)]


def run_worker(cases: dict[str, list[str]], nproc: int, out_dir) -> list[tuple[str, dict]]:
    """Measure ``cases`` in ``nproc`` processes; each rank writes its results to a file of its own (the ranks'
    stdout lines can interleave)."""
    payload = json.dumps([TINY + flags for flags in cases.values()])
    env = quiet_env(CUDA_VISIBLE_DEVICES="")  # the CPU code paths the estimate is made for, on any machine
    target = [os.path.abspath(__file__), str(out_dir), payload]
    if nproc == 1:
        proc = subprocess.run([sys.executable, *target], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    else:
        torchrun(nproc, target, timeout=900, env=env)
    order = {json.dumps(TINY + flags): (i, name) for i, (name, flags) in enumerate(cases.items())}
    rows = [json.loads(line) for path in sorted(out_dir.glob("rank*.jsonl")) for line in path.read_text().splitlines()]
    assert len(rows) == len(cases) * nproc, rows
    rows.sort(key=lambda r: (order[json.dumps(r["flags"])][0], r["rank"]))
    return [(order[json.dumps(r["flags"])][1], r) for r in rows]


def compare(rows: list[tuple[str, dict]], world: int) -> list[str]:
    """Print the table (pytest -s shows it) and return the entries off by more than the tolerance."""
    header = (f"{'configuration':<28} {'rank':>4}  {'params MiB':>17}  {'grads MiB':>17}  {'optimizer MiB':>17}  "
              f"{'activations MiB':>17}  {'total MiB':>17}  {'act est/meas':>12}  {'total est/meas':>14}")
    lines, failures = [header, "-" * len(header)], []
    for name, m in rows:
        est = estimated(m["flags"], world, m["pp_rank"])
        cells, ratios = [], {}
        for key in ("parameters", "gradients", "optimizer", "activations"):
            e, v = getattr(est, key), m[key]
            ratios[key] = e / v
            cells.append(f"{e / MIB:7.2f} / {v / MIB:7.2f}")
        measured_total = sum(m[k] for k in ("parameters", "gradients", "optimizer", "activations"))
        ratios["total"] = est.total / measured_total
        cells.append(f"{est.total / MIB:7.2f} / {measured_total / MIB:7.2f}")
        lines.append(f"{name:<28} {m['rank']:>4}  " + "  ".join(f"{c:>17}" for c in cells)
                     + f"  {ratios['activations']:>12.3f}  {ratios['total']:>14.3f}")
        failures += [f"{name} rank {m['rank']} {k}: estimate/measured {r:.3f}" for k, r in ratios.items()
                     if abs(r - 1) > TOLERANCE]
    print("\nestimate / measured, tiny Qwen (h128, 4 heads, 4 layers, FFN 352, vocab 1024 unless named), seq 128, "
          "micro-batch 2")
    print("\n".join(lines))
    return failures


def test_estimate_matches_memory_measured_in_one_process(tmp_path):
    failures = compare(run_worker(SINGLE_PROCESS, 1, tmp_path), world=1)
    assert not failures, failures


def test_estimate_matches_memory_measured_at_tp2_pp2_interleaved(tmp_path):
    rows = run_worker(MULTI_PROCESS, 4, tmp_path)
    for _, m in rows:  # each rank holds the parameters the estimator counts for its stage
        work, layout = workload_and_layout(m["flags"], 4)
        assert stage_parameters(work.model, layout, stage_name(layout, m["pp_rank"])) == m["num_params"], m
    failures = compare(rows, world=4)
    assert not failures, failures


# ---------------------------------------------------------------------------------------------- counts and schedules


@pytest.mark.parametrize("size", ["1.8b", "7b", "14b", "72b"])
def test_parameter_count_is_the_built_models(single_process_per_module, size):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", size])
    (model,) = build_on_meta(cfg.model, cfg.parallel, cfg.build)
    assert stage_parameters(cfg.model, Layout(), "only") == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pp,vp", [(2, 1), (4, 1), (4, 2), (8, 5)])
def test_first_stage_holds_korthikantis_layer_count(pp, vp):
    """Korthikanti et al. 2022, section 4.2.3: with enough micro-batches the first stage of 1F1B stores L
    layers' activations, of interleaved 1F1B with VP chunks L (1 + (PP - 1) / (PP VP))."""
    layers = 80
    in_flight = chunks_in_flight(64, Layout(pp=pp, vp=vp), rank=0) * layers // (pp * vp)
    expected = layers * (1 + (pp - 1) / (pp * vp)) if vp > 1 else layers
    assert in_flight == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- DeepSpeed


# DeepSpeed's own estimators (deepspeed.runtime.zero.stage_1_and_2 / stage3; the _all_cold variants print them):
# bf16 parameters (whole at stage 2, a partition at 3) and 18 bytes a parameter over all GPUs: at stage 2 a bf16
# gradient partition (2), an fp32 one (4), the fp32 master (4) and Adam's moments (8); stage 3 adds 4 bytes a
# parameter of the largest module. Our fp32 gradient accumulation keeps no bf16 gradient partition at stage 2:
# like with like, those 2 bytes are added to ours. additional_buffer_factor=1: the state itself, without
# DeepSpeed's 50% margin on CPU memory.
ESTIMATOR_CASES = [(2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)]


@pytest.mark.parametrize("size", ["1.8b", "7b", "14b", "72b"])
def test_deepspeed_states_match_deepspeeds_estimators(size):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from megatron_qwen.config.model import model_preset
    from megatron_qwen.planning.zero_memory import deepspeed_states, largest_module

    model = model_preset(size)
    params = stage_parameters(model, Layout(), "only")
    largest = model.padded_vocab_size * model.hidden_size  # by hand: the embedding is every preset's largest module
    assert largest_module(model, 1) == largest
    for gpus_per_node, nodes in ((4, 1), (8, 4)):
        dp = gpus_per_node * nodes
        for stage, off_opt, off_param in ESTIMATOR_CASES:
            ours = deepspeed_states(params, largest, dp, stage, True, off_opt, off_param)
            bf16_partition = 2 * params / dp if stage == 2 and not off_opt else 0.0
            if stage == 2:
                cpu, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, off_opt, 1.0)
            else:
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, gpus_per_node, nodes, off_opt,
                                                                     off_param, True, 1.0)
            case = (size, dp, stage, off_opt, off_param)
            on_gpu = ours.parameters + ours.gradients + ours.optimizer + bf16_partition
            assert on_gpu == pytest.approx(gpu, rel=0.05), case
            if off_opt and (stage == 3 or nodes == 1):
                # DeepSpeed's figure is per node; its ZeRO-2 figure is max(4 x GPUs per node, 16) bytes a
                # parameter, the larger being the fp32 model each process loads at start: 16 with 4 GPUs a node.
                assert ours.cpu * gpus_per_node == pytest.approx(cpu, rel=0.05), case


def test_deepspeed_stage1_by_hand():
    """ZeRO-1 in bf16 with fp32 gradient accumulation: 2 + 4 bytes a parameter whole and 12 over DP;
    offloaded, the fp32 gradients stay whole on the GPU and 16 bytes over DP go to the CPU."""
    from megatron_qwen.planning.zero_memory import deepspeed_states

    p = 1e9
    s = deepspeed_states(p, 0, 8, 1, True)
    assert (s.parameters, s.gradients, s.optimizer, s.cpu) == (2 * p, 4 * p, 12 * p / 8, 0)
    s = deepspeed_states(p, 0, 8, 1, True, offload_optimizer=True)
    assert (s.parameters, s.gradients, s.optimizer, s.cpu) == (2 * p, 4 * p, 0, 16 * p / 8)


if __name__ == "__main__":
    out_dir, cases = sys.argv[1], json.loads(sys.argv[2])
    results = [measure(case) for case in cases]
    with open(os.path.join(out_dir, f"rank{results[0]['rank']}.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
