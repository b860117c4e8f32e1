"""DeepSpeed ZeRO stages 1-3 train the tiny Qwen exactly like the single-process megatron engine does.

Reference: the megatron engine at one process (itself anchored on transformers, test_parity.py and
test_hf_parity.py), same seed and layout-independent initial weights, the parity suite's global batch
stream, gradient clipping low enough to act. Memory: the hand count of an unsharded AdamW state
(fp32 master copy + two moments = 12 bytes per parameter). One launch per process count
(tests/parity/deepspeed_worker.py).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env, torchrun

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.layout import unshard
from megatron_qwen.training.arguments import parse_run_config

WORKER = os.path.join(REPO, "tests", "parity", "deepspeed_worker.py")
DS = ["--zero-engine", "deepspeed"]
TP2_SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
LAYOUTS = {  # name: (processes, flags)
    **{f"dp2_zero{s}": (2, [*DS, "--zero-stage", str(s)]) for s in (1, 2, 3)},
    # TP2 with sequence parallelism (TP2 without it is the same minus the norms' TP sum): stage 3 at DP2 (it
    # partitions what stages 1 and 2 do, and the parameters too), stages 1 and 2 at DP1, and the megatron engine
    "tp2_sp_dp2_zero3": (4, [*DS, "--zero-stage", "3", *TP2_SP]),
    **{f"tp2_sp_zero{s}": (2, [*DS, "--zero-stage", str(s), *TP2_SP]) for s in (1, 2)},
    "tp2_sp_megatron": (2, ["--zero-engine", "megatron", *TP2_SP]),
    **{f"bf16_dp2_zero{s}": (2, [*DS, "--zero-stage", str(s), "--bf16"]) for s in (1, 2, 3)},
    "bf16_dp2_megatron": (2, ["--zero-engine", "megatron", "--bf16"]),
    # torch's AdamW (its fused CPU kernel, the offload default without DeepSpeed's CPU Adam): the CPU Adam build
    # takes minutes (test_deepspeed_optimizer.py)
    "dp2_zero3_offload": (2, [*DS, "--zero-stage", "3", "--zero-offload-optimizer", "cpu",
                              "--zero-offload-param", "cpu", "--use-torch-adamw"]),
}
SAVED = ("dp2_zero1", "tp2_sp_dp2_zero3")  # these also save a checkpoint, converted in the single-process launch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    by_nproc: dict[int, dict] = {}
    for name, (nproc, flags) in LAYOUTS.items():
        save = ["--save", str(root / name / "ckpt")] if name in SAVED else []
        by_nproc.setdefault(nproc, {})[name] = flags + save
    torchrun(4, [WORKER, "--out", str(root), "--parity", json.dumps(by_nproc[4])])
    torchrun(2, [WORKER, "--out", str(root), "--parity", json.dumps(by_nproc[2]), "--jobs"])
    single = [WORKER, "--out", str(root), "--parity", json.dumps({"ref": ["--zero-engine", "megatron"]}),
              "--convert", json.dumps({name: str(root / name / "ckpt") for name in SAVED})]
    proc = subprocess.run([sys.executable, *single], cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root


def read(root, name, file):
    return json.load(open(root / name / f"{file}.json"))


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if not name.startswith("bf16")])
def test_losses_match_single_process(runs, layout):
    ref, got = read(runs, "ref", "losses"), read(runs, layout, "losses")
    assert len(got) == len(ref) == 5
    for step, (a, b) in enumerate(zip(got, ref)):
        assert abs(a - b) <= 1e-5 * abs(b), f"{layout}: step {step} loss {a} vs {b}"
    norms, ref_norms = read(runs, layout, "grad_norms"), read(runs, "ref", "grad_norms")
    for a, b in zip(norms, ref_norms):
        assert abs(a - b) <= 1e-4 * b, f"{layout}: grad norm {a} vs {b}"


@pytest.mark.parametrize("layout", ["tp2_sp_zero1", "tp2_sp_zero2", "tp2_sp_dp2_zero3"])
def test_sequence_parallel_as_on_the_megatron_engine(runs, layout):
    """Under sequence parallelism the norm weights (replicated over TP) stay bit-equal on both TP ranks after 5
    steps, and the losses are the megatron engine's with the same flags (which sums their gradients over TP)."""
    assert read(runs, "tp2_sp_megatron", "tp_replica_spread") == 0.0
    assert read(runs, layout, "tp_replica_spread") == 0.0
    for step, (a, b) in enumerate(zip(read(runs, layout, "losses"), read(runs, "tp2_sp_megatron", "losses"))):
        assert abs(a - b) <= 1e-5 * abs(b), f"{layout}: step {step} loss {a} vs megatron engine {b}"


@pytest.mark.parametrize("stage", (1, 2, 3))
def test_bf16_accumulates_in_fp32_as_on_the_megatron_engine(runs, stage):
    """bf16 at DP2 (2 micro-batches per rank): DeepSpeed runs with fp32 gradient accumulation and reduction and
    fp32 master weights (as megatron-core's DDP with grad_reduce_in_fp32 and its fp32 main params), read from
    DeepSpeed itself; losses within 1e-4 and gradient norms within 1% of the megatron engine in bf16.

    The tolerance: the two engines round the gradients to bf16 (8-bit mantissa, 2^-9 = 2e-3 relative) at
    different points. This engine scales each micro-batch's token-loss sum by DP x accumulation / tokens before
    the backward, so the bf16 logits' gradient is rounded after that scaling; megatron-core backpropagates the
    plain sum and divides in fp32 afterwards. Measured here: gradient norms up to 0.3% apart (each engine's
    step-1 norm is within 0.2% of the fp32 run's, on opposite sides), losses up to 2.2e-5 apart after 5 steps.
    Accumulating in bf16 instead moves the losses by no more than that at this size, which is why the dtypes
    are asserted from DeepSpeed's own state."""
    name = f"bf16_dp2_zero{stage}"
    assert read(runs, name, "dtypes") == {"model": "torch.bfloat16", "grad_accum": "torch.float32",
                                          "communication": "torch.float32", "master": ["torch.float32"]}
    got, ref = read(runs, name, "losses"), read(runs, "bf16_dp2_megatron", "losses")
    assert len(got) == len(ref) == 5
    for step, (a, b) in enumerate(zip(got, ref)):
        assert abs(a - b) <= 1e-4 * abs(b), f"{name}: step {step} loss {a} vs megatron engine {b}"
    for a, b in zip(read(runs, name, "grad_norms"), read(runs, "bf16_dp2_megatron", "grad_norms")):
        assert abs(a - b) <= 1e-2 * b, f"{name}: grad norm {a} vs megatron engine {b}"


def test_clipping_acts_and_reference_learns(runs):
    """Every step's norm exceeds --clip-grad (0.3 in the worker), so clipping is part of what matches."""
    norms, losses = read(runs, "ref", "grad_norms"), read(runs, "ref", "losses")
    assert min(norms) > 0.3
    assert len(set(losses)) == len(losses)


def test_memory_sharded_over_data_parallel(runs):
    """Adam's moments (8 bytes per parameter unsharded) and the fp32 master copies (4) per rank, and stage 3's
    parameters (4), are 1/DP of the unsharded amounts within 5%."""
    params = read(runs, "ref", "params")
    unsharded = {"adam_moments": 8 * params, "fp32_master": 4 * params, "parameters": 4 * params}
    rows = [f"{'DP2 run, rank':<24} {'Adam moments B':>15} {'fp32 master B':>14} {'parameters B':>13} "
            f"{'/ unsharded: moments, master, params':>38}"]
    for name in ("dp2_zero1", "dp2_zero2", "dp2_zero3", "dp2_zero3_offload"):
        for rank in range(2):
            got = read(runs, name, f"bytes_rank{rank}")
            ratios = {k: got[k] / unsharded[k] for k in unsharded}
            rows.append(f"{name + ' r' + str(rank):<24} {got['adam_moments']:>15,} {got['fp32_master']:>14,} "
                        f"{got['parameters']:>13,} {ratios['adam_moments']:>20.3f} {ratios['fp32_master']:>7.3f} "
                        f"{ratios['parameters']:>7.3f}")
            for part in ("adam_moments", "fp32_master"):
                assert abs(ratios[part] - 0.5) <= 0.05 * 0.5, (name, rank, part, ratios)
            want_params = 0.5 if "zero3" in name else 1.0
            assert abs(ratios["parameters"] - want_params) <= 0.05 * want_params, (name, rank, ratios)
    print(f"\nunsharded: {params:,} parameters, Adam moments {8 * params:,} B, fp32 master and parameters "
          f"{4 * params:,} B each")
    print("\n".join(rows))


def _losses(path) -> dict[int, float]:
    return {r["iteration"]: r["lm_loss"] for r in map(json.loads, open(path)) if "lm_loss" in r}


def test_zero3_resume_equals_uninterrupted(runs):
    # The resume found iteration 2's checkpoint truncated and, with --load-fallback, continued from iteration 1.
    jobs = runs / "jobs"
    ref, first, resumed = (_losses(jobs / f"{n}.jsonl") for n in ("uninterrupted", "first", "resumed"))
    assert sorted(first) == [1, 2] and sorted(resumed) == [2, 3, 4]
    for it, loss in [*first.items(), *resumed.items()]:
        assert loss == ref[it], f"iteration {it}: {loss} vs uninterrupted {ref[it]}"


@pytest.mark.parametrize("saved, resumed", [(3, 3), (1, 2)])
def test_resume_at_another_layout_equals_uninterrupted(runs, saved, resumed):
    """Saved after 2 iterations at TP2 x DP1, resumed to 4 at TP1 x DP2 with the optimizer state, through DeepSpeed's
    universal checkpoint (converted by its ds_to_universal, here with the slicing our TP layers declare): the losses
    equal the uninterrupted ZeRO-3 DP2 run's within 1e-5 and its gradient norms within 1e-4 (weight decay 1.0: a
    no-decay group given decay moves the step-4 norm by 1e-3)."""
    jobs = runs / "jobs"
    ref = {r["iteration"]: r for r in map(json.loads, open(jobs / "uninterrupted.jsonl"))}
    got = {r["iteration"]: r for r in map(json.loads, open(jobs / f"tp2_zero{saved}_to_dp2_zero{resumed}.jsonl"))}
    assert sorted(got) == [3, 4] and os.path.isdir(jobs / f"ckpt_tp2_zero{saved}" / "iter_0000002" / "universal")
    for it in (3, 4):
        assert abs(got[it]["lm_loss"] - ref[it]["lm_loss"]) <= 1e-5 * ref[it]["lm_loss"], (it, got[it], ref[it])
        assert abs(got[it]["grad_norm"] - ref[it]["grad_norm"]) <= 1e-4 * ref[it]["grad_norm"], (it, got[it], ref[it])


@pytest.mark.parametrize("saved, stage", [(1, 3), (3, 2)])
def test_resume_across_the_zero3_boundary_refused_before_any_process_group(runs, saved, stage):
    from megatron_qwen.training.preflight import check_run

    ckpt = runs / "jobs" / f"ckpt_tp2_zero{saved}"
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--seq-length", "32", *DS,
                                      "--zero-stage", str(stage), "--load", str(ckpt)])
    with pytest.raises(ConfigError, match=f"saved at ZeRO-{saved}; DeepSpeed's universal checkpoint does not take "
                                          f"it to ZeRO-{stage}") as e:
        check_run(cfg, 2)
    assert "\n" not in str(e.value)


def test_nan_step_is_skipped_as_on_the_megatron_engine(runs):
    jobs = runs / "jobs"
    rows = {n: {r["iteration"]: r for r in map(json.loads, open(jobs / f"{n}.jsonl"))}
            for n in ("nan_zero3", "nan_megatron", "uninterrupted")}
    ds, mg, clean = rows["nan_zero3"], rows["nan_megatron"], rows["uninterrupted"]
    assert math.isnan(ds[2]["lm_loss"]) and ds[4]["skipped_iterations"] == mg[4]["skipped_iterations"] == 1
    for it in (1, 3, 4):  # the same weights, optimizer state and LR after the skipped step
        assert abs(ds[it]["lm_loss"] - mg[it]["lm_loss"]) <= 1e-5 * mg[it]["lm_loss"], (it, ds[it], mg[it])
        assert ds[it]["lr"] == pytest.approx(mg[it]["lr"], rel=1e-12)
    assert abs(ds[3]["lm_loss"] - clean[3]["lm_loss"]) > 1e-3 * clean[3]["lm_loss"]  # the skip changed something


def test_sft_entry_points_run_on_deepspeed(runs):
    last = json.load(open(runs / "jobs" / "entry_points.json"))
    assert set(last) == {"sft", "sft_math"}
    assert all(0 < loss < 20 and 0 < valid < 20 for loss, valid in last.values()), last  # trained and evaluated
    # sft_math started from the pretrained ZeRO-3 checkpoint's weights (its --finetune), sft from scratch on the
    # same mock data: the pretrained start is already lower (without the load both start at ~6.95)
    assert last["sft_math"][0] < last["sft"][0] - 0.1, last


@pytest.mark.parametrize("name", SAVED)
def test_conversion_to_ours_keeps_the_weights(runs, name):
    """The converted checkpoint, read by a job's loader at TP1, holds the DeepSpeed run's fp32 weights after
    5 steps (merged from its TP slices, gathered from ZeRO-3 partitions by the worker); its Hugging Face export too."""
    slices: dict[str, dict[int, torch.Tensor]] = {}
    dims = {}
    for f in os.listdir(runs / name):
        if f.startswith("weights_rank"):
            for n, (tp_rank, dim, t) in torch.load(runs / name / f).items():
                slices.setdefault(n, {})[tp_rank] = t
                dims[n] = dim
    want = {n: unshard([s[r] for r in sorted(s)], n, dims[n]) for n, s in slices.items()}
    got = torch.load(runs / "convert" / f"{name}.pt")
    assert set(want) == {n for n in got if not n.startswith("hf:")}
    for n in want:
        assert torch.equal(got[n], want[n]), n
    assert torch.equal(got["hf:lm_head.weight"], want["output_layer.weight"])


@pytest.mark.parametrize("flags, words", [
    (["--zero-engine", "deepspeed", "--zero-stage", "2", "--pipeline-model-parallel-size", "2"],
     "DeepSpeed refuses ZeRO-2/3 with pipeline parallelism"),
    (["--zero-offload-optimizer", "cpu"], "--zero-offload-optimizer cpu needs --zero-engine deepspeed"),
    (["--zero-stage", "3"], "--zero-stage 3 needs --zero-engine deepspeed"),
    (["--zero-engine", "deepspeed", "--zero-offload-param", "cpu"], "--zero-offload-param cpu needs --zero-stage 3"),
    (["--zero-engine", "deepspeed", "--use-distributed-optimizer"], "--use-distributed-optimizer belongs to"),
])
def test_refused_before_any_process_group(flags, words):
    with pytest.raises(ConfigError, match=words.replace("/", ".")) as e:  # in parsing or in validation
        parse_run_config(PRETRAIN, ["--mock-data", "--seq-length", "32", *flags]).validate(4)
    assert "\n" not in str(e.value)


def test_deepspeed_json_under_our_flags(tmp_path):
    from megatron_qwen.config.zero import deepspeed_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1000},
                                "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": True}))
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--zero-engine", "deepspeed", "--deepspeed-config", str(user),
                                      "--micro-batch-size", "2", "--global-batch-size", "8", "--clip-grad", "0.5"])
    assert cfg.zero.stage == 3  # taken from the JSON: no --zero-stage given
    eff = deepspeed_config(cfg.zero, 8, 2, 2, 0.5, False, False)
    assert eff["zero_optimization"]["stage3_max_live_parameters"] == 1000 and eff["wall_clock_breakdown"]
    assert (eff["train_micro_batch_size_per_gpu"], eff["gradient_accumulation_steps"]) == (2, 2)
    assert eff["gradient_clipping"] == 0.5
    with pytest.raises(ConfigError, match="--zero-stage 2 contradicts zero_optimization.stage = 3"):
        parse_run_config(PRETRAIN, ["--mock-data", *DS, "--deepspeed-config", str(user), "--zero-stage", "2"])
    user.write_text(json.dumps({"train_batch_size": 16}))
    with pytest.raises(ConfigError, match="--global-batch-size 8 contradicts train_batch_size = 16"):
        parse_run_config(PRETRAIN, ["--mock-data", *DS, "--deepspeed-config", str(user), "--global-batch-size", "8"])
    user.write_text(json.dumps({"data_types": {"grad_accum_dtype": "bf16"}}))  # bf16 accumulation: not ours
    cfg = parse_run_config(PRETRAIN, ["--mock-data", *DS, "--deepspeed-config", str(user)])
    with pytest.raises(ConfigError, match="sets data_types.grad_accum_dtype = 'bf16' but the flags give 'fp32'"):
        deepspeed_config(cfg.zero, 8, 2, 2, 1.0, True, False)
