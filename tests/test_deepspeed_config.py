"""Megatron-DeepSpeed's command line and DeepSpeed JSONs (docs/zero.md): --deepspeed, --deepspeed_config,
its example configs parsed through our parser, their optimizer and scheduler sections mapped onto our
AdamW and megatron-core's LR schedule, checked per step against DeepSpeed's own scheduler classes."""

import json

import pytest
import torch
from conftest import torchrun
from deepspeed.runtime import lr_schedules

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.optimizer import build_scheduler

TINY = ["--mock-data", "--model-size", "tiny", "--seq-length", "32"]

# Megatron-DeepSpeed (github.com/microsoft/Megatron-DeepSpeed, commit f4157bea) example configs, same keys and
# values; the templates' placeholders filled as their scripts fill them.
# examples_deepspeed/universal_checkpointing/ds_config.json
UNIVERSAL_CHECKPOINTING = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 16, "steps_per_print": 1,
                           "zero_optimization": {"stage": 1}, "bf16": {"enabled": True},
                           "data_types": {"grad_accum_dtype": "fp32"}, "wall_clock_breakdown": False}
# examples_deepspeed/curriculum_learning/ds_zero_stage_1_config_baseline.json
CURRICULUM_BASELINE = {"train_batch_size": 512, "gradient_accumulation_steps": 1, "steps_per_print": 1,
                       "zero_optimization": {"stage": 1},
                       "optimizer": {"type": "Adam", "params": {"lr": 0.00015, "max_grad_norm": 1.0,
                                                                "betas": [0.9, 0.95]}},
                       "gradient_clipping": 1.0,
                       "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2,
                                "min_loss_scale": 1},
                       "wall_clock_breakdown": False, "zero_allow_untested_optimizer": False}
# examples_deepspeed/offload_pp/ds_config_gpt_TEMPLATE.json (CONFIG_FP16_ENABLED / CONFIG_BF16_ENABLED = false)
OFFLOAD_PP = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 10,
              "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True,
                                                                      "ratio": 0.3}},
              "gradient_clipping": 1.0, "prescale_gradients": False,
              "fp16": {"enabled": False, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                       "min_loss_scale": 1, "initial_scale_power": 11},
              "bf16": {"enabled": False}, "wall_clock_breakdown": False}
# examples_deepspeed/deepspeed4science/megatron_long_seq_support/ds_config_gpt_TEMPLATE.json: its flops_profiler,
# with fp16 off (the template hard-codes fp16, refused below) and ZERO_STAGE = 2
FLOPS_PROFILER = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 5,
                  "zero_optimization": {"stage": 2}, "gradient_clipping": 1.0, "prescale_gradients": False,
                  "fp16": {"enabled": False, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                           "min_loss_scale": 1, "initial_scale_power": 11},
                  "flops_profiler": {"enabled": True, "profile_step": 1, "module_depth": -1, "top_modules": 3,
                                     "detailed": True, "output_file": None},
                  "wall_clock_breakdown": False}


def _write(tmp_path, config: dict, name: str = "ds.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


def _effective(cfg, world_size: int) -> dict:
    return cfg.effective_deepspeed_config(world_size)


def test_deepspeed_flag_is_the_deepspeed_engine():
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--zero-stage", "2"])
    assert (cfg.zero.engine, cfg.zero.stage, cfg.zero.torch_adamw) == ("deepspeed", 2, False)
    assert parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--zero-engine", "deepspeed"]).zero.deepspeed
    assert parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--use-torch-adamw"]).zero.torch_adamw
    assert not parse_run_config(PRETRAIN, TINY).zero.deepspeed
    with pytest.raises(ConfigError, match="--deepspeed contradicts --zero-engine megatron"):
        parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--zero-engine", "megatron"])


def test_universal_checkpointing_example(tmp_path):
    path = _write(tmp_path, UNIVERSAL_CHECKPOINTING)
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", path, "--zero-stage", "1",
                                      "--tensor-model-parallel-size", "2"])
    cfg.validate(2)
    t = cfg.train
    assert (t.global_batch_size, t.micro_batch_size, cfg.build.precision) == (16, 16, "bf16")  # from the JSON
    eff = _effective(cfg, 2)
    assert eff["steps_per_print"] == 1  # the user's logging value wins over ours
    assert eff["data_types"] == {"grad_accum_dtype": "fp32"} and eff["wall_clock_breakdown"] is False


def test_curriculum_baseline_example(tmp_path):
    with pytest.raises(ConfigError, match="sets fp16.enabled = true: fp16 with loss scaling is not built") as e:
        parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", _write(tmp_path, CURRICULUM_BASELINE)])
    assert "\n" not in str(e.value)
    # The same file in bf16: its Adam section (adam_w_mode defaults to true: AdamW) becomes our AdamW.
    bf16 = {**CURRICULUM_BASELINE, "fp16": {**CURRICULUM_BASELINE["fp16"], "enabled": False}, "bf16": {"enabled": True}}
    path = _write(tmp_path, bf16)
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", path, "--micro-batch-size", "4"])
    o = cfg.train.optim
    assert (o.lr, o.adam_beta1, o.adam_beta2, o.clip_grad) == (0.00015, 0.9, 0.95, 1.0)
    assert (o.weight_decay, o.adam_eps) == (0.1, 1e-8)  # keys it omits keep our defaults, as in Megatron-DeepSpeed
    assert cfg.train.global_batch_size == 512
    eff = _effective(cfg, 128)  # 512 = 4 x 128 x 1, its gradient_accumulation_steps
    assert "optimizer" not in eff and "scheduler" not in eff  # ours run the numbers, DeepSpeed gets neither
    assert eff["zero_allow_untested_optimizer"] is False and eff["steps_per_print"] == 1
    with pytest.raises(ConfigError, match="--lr 0.0003 contradicts optimizer.params.lr = 0.00015"):
        parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", path, "--lr", "3e-4"])
    same = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", path, "--lr", "1.5e-4",
                                       "--adam-beta2", "0.95", "--micro-batch-size", "4"])
    assert same.train.optim == o  # agreeing flags are fine


def test_offload_and_flops_profiler_examples(tmp_path):
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", _write(tmp_path, OFFLOAD_PP)])
    cfg.validate(4)
    assert (cfg.zero.stage, cfg.zero.offload_optimizer, cfg.zero.offload_param) == (3, "cpu", "none")
    assert _effective(cfg, 4)["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True,
                                                                            "ratio": 0.3}
    with pytest.raises(ConfigError, match="--zero-stage 1 contradicts zero_optimization.stage = 3"):
        parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", _write(tmp_path, OFFLOAD_PP),
                                    "--zero-stage", "1"])
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed-config", _write(tmp_path, FLOPS_PROFILER)])
    assert cfg.zero.stage == 2 and _effective(cfg, 4)["flops_profiler"] == FLOPS_PROFILER["flops_profiler"]


# One scheduler of each kind, linear warmup from a nonzero start; values small enough to walk every step.
SCHEDULERS = {
    "WarmupLR": {"warmup_min_lr": 1e-5, "warmup_max_lr": 2e-4, "warmup_num_steps": 7, "warmup_type": "linear"},
    "WarmupDecayLR": {"warmup_min_lr": 1e-5, "warmup_max_lr": 2e-4, "warmup_num_steps": 7, "total_num_steps": 30,
                      "warmup_type": "linear"},
    "WarmupCosineLR": {"warmup_min_ratio": 0.1, "warmup_num_steps": 7, "cos_min_ratio": 0.05, "total_num_steps": 30,
                       "warmup_type": "linear"},
}


def _our_lrs(optim, train_iters: int, gbs: int, steps: int) -> list[float]:
    """Our schedule's LR after 0, 1, ... steps (the LR the metrics report for each iteration)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched = build_scheduler(opt, optim, train_iters, gbs)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        sched.step(increment=gbs)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _deepspeed_lrs(kind: str, params: dict, lr: float, steps: int) -> list[float]:
    """DeepSpeed's own scheduler at last_batch_iteration 0, 1, ... (deepspeed/runtime/lr_schedules.py)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = getattr(lr_schedules, kind)(opt, **params)
    lrs = []
    for t in range(steps + 1):
        sched.step(last_batch_iteration=t)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_scheduler_section_is_deepspeeds_schedule(kind, tmp_path):
    params = SCHEDULERS[kind]
    path = _write(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": 2e-4}},
                             "scheduler": {"type": kind, "params": params}})
    cfg = parse_run_config(PRETRAIN, [*TINY, "--deepspeed", "--deepspeed_config", path, "--train-iters", "40",
                                      "--global-batch-size", "4"])
    steps = 40
    ours = _our_lrs(cfg.train.optim, 40, 4, steps)
    theirs = _deepspeed_lrs(kind, params, 2e-4, steps)
    warmup = params["warmup_num_steps"]
    if kind == "WarmupCosineLR":
        # DeepSpeed's cosine counts the first step after the warmup as one step into the decay (it never
        # applies the peak): the same curve, ours one step later after the warmup.
        assert ours[warmup] == pytest.approx(2e-4, rel=1e-12) and max(theirs) < 2e-4
        pairs = list(zip(ours[:warmup], theirs[:warmup])) + list(zip(ours[warmup + 1:], theirs[warmup:]))
    else:
        pairs = list(zip(ours, theirs))
    for s, (a, b) in enumerate(pairs):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-18), (s, a, b)
    assert len(set(ours)) > warmup  # the whole warmup (and the decay) walked


def test_end_to_end_megatron_deepspeed_command_line(tmp_path):
    """torchrun 2 x pretrain with Megatron-DeepSpeed's flags and its universal-checkpointing example config,
    plus an AdamW and a WarmupDecayLR section: the LR of every iteration is DeepSpeed's class's, the config
    DeepSpeed gets keeps the user's steps_per_print and has neither section."""
    sched = {"warmup_min_lr": 1e-4, "warmup_max_lr": 1e-3, "warmup_num_steps": 2, "total_num_steps": 4,
             "warmup_type": "linear"}
    path = _write(tmp_path, {**UNIVERSAL_CHECKPOINTING,
                             "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95]}},
                             "scheduler": {"type": "WarmupDecayLR", "params": sched}})
    metrics = tmp_path / "metrics.jsonl"
    out = torchrun(2, ["-m", "megatron_qwen.pretrain", *TINY, "--train-iters", "3", "--eval-iters", "0",
                       "--tensor-model-parallel-size", "2", "--deepspeed", "--deepspeed_config", path,
                       "--zero-stage", "1", "--metrics-file", str(metrics)], timeout=300)
    lrs = [json.loads(line)["lr"] for line in metrics.read_text().splitlines()]
    assert lrs == pytest.approx(_deepspeed_lrs("WarmupDecayLR", sched, 1e-3, 3)[1:], rel=1e-9)
    given, _ = json.JSONDecoder().raw_decode(out.split(" DeepSpeed config: ", 1)[1])  # other ranks' output may follow
    assert given["steps_per_print"] == 1 and given["train_batch_size"] == 16 and given["bf16"]["enabled"]
    assert "optimizer" not in given and "scheduler" not in given
