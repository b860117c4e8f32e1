"""Recipe defaults follow the Qwen report, and the LR schedules are the ones it describes."""

import math

import pytest

from megatron_qwen.config.arguments import parse_run_config
from megatron_qwen.config.recipes import PRETRAIN, PRETRAIN_CODE, SFT, SFT_MATH
from megatron_qwen.training.optimizer import build_scheduler


class _Optimizer:
    """The part of an optimizer the LR scheduler touches."""

    def __init__(self):
        self.param_groups = [{"lr": 0.0, "weight_decay": 0.0}]


def lr_curve(recipe, argv, gbs: int):
    cfg = parse_run_config(recipe, ["--mock-data", "--global-batch-size", str(gbs), *argv])
    t = cfg.train
    opt = _Optimizer()
    sched = build_scheduler(opt, t.optim, t.train_iters, gbs)
    curve = {0: opt.param_groups[0]["lr"]}
    for it in range(1, t.train_iters + 1):
        sched.step(increment=gbs)
        curve[it] = opt.param_groups[0]["lr"]
    return cfg, curve


def test_pretrain_cosine_to_ten_percent():
    cfg, lr = lr_curve(PRETRAIN, ["--train-iters", "100", "--lr-warmup-iters", "10"], gbs=4)
    peak = 3e-4
    assert cfg.train.optim.lr == peak and cfg.train.seq_length == 2048
    assert lr[5] == pytest.approx(peak * 5 / 10)  # linear warmup
    assert lr[10] == pytest.approx(peak)
    mid = 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * 45 / 90))  # hand-computed cosine
    assert lr[55] == pytest.approx(mid)
    assert lr[100] == pytest.approx(0.1 * peak)


def test_code_qwen_three_percent_warmup_then_constant():
    cfg, lr = lr_curve(PRETRAIN_CODE, ["--train-iters", "200", "--model-size", "14b"], gbs=4)
    assert cfg.train.seq_length == 8192 and cfg.train.optim.lr == 6e-5 and cfg.checkpoint.finetune
    assert cfg.train.optim.lr_warmup_iters == 6  # 3% of 200
    assert lr[3] == pytest.approx(6e-5 / 2)
    assert all(lr[i] == pytest.approx(6e-5) for i in range(6, 201))
    cfg7, _ = lr_curve(PRETRAIN_CODE, ["--train-iters", "10", "--model-size", "7b"], gbs=4)
    assert cfg7.train.optim.lr == 3e-5


def test_sft_recipes_match_report():
    sft = parse_run_config(SFT, ["--mock-data"]).train
    assert (sft.seq_length, sft.global_batch_size, sft.train_iters, sft.optim.lr_warmup_iters, sft.optim.lr) == \
        (2048, 128, 4000, 1430, 2e-6)
    assert sft.hidden_dropout == sft.attention_dropout == 0.1
    math_ = parse_run_config(SFT_MATH, ["--mock-data"]).train
    assert (math_.seq_length, math_.optim.lr, math_.train_iters) == (1024, 2e-5, 50_000)
    for o in (sft.optim, math_.optim):
        assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.weight_decay, o.clip_grad) == (0.9, 0.95, 1e-8, 0.1, 1.0)


def test_pretrain_batch_is_four_million_tokens_for_published_sizes():
    for size in ("1.8b", "7b", "14b"):
        t = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", size]).train
        assert t.global_batch_size * t.seq_length == 2048 * 2048  # ~4M tokens
    assert parse_run_config(PRETRAIN, ["--mock-data", "--global-batch-size", "16"]).train.global_batch_size == 16
