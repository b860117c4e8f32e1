"""A run's length in steps, samples or tokens (config/budget.py): the same budget in each unit gives the same
steps and the same LR at every step, and a schedule counted in another unit than the budget is refused."""

import re

import pytest
from test_recipes import lr_curve

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN, PRETRAIN_CODE, SFT_CODE
from megatron_qwen.training.arguments import parse_run_config

GBS, SEQ = 4, 32  # a step is 4 samples of 32 tokens: 128 tokens


def in_units(steps: int, warmup: int | None = None, decay: int | None = None) -> dict[str, list[str]]:
    """One budget (and warmup and decay horizon, in steps) written in steps, samples and tokens."""
    forms = {}
    for unit, per_step in (("iters", 1), ("samples", GBS), ("tokens", GBS * SEQ)):
        flags = [f"--train-{unit}", str(steps * per_step)]
        flags += [f"--lr-warmup-{unit}", str(warmup * per_step)] if warmup is not None else []
        flags += [f"--lr-decay-{unit}", str(decay * per_step)] if decay is not None else []
        forms[unit] = flags
    return forms


@pytest.mark.parametrize("recipe, steps, warmup, decay, extra", [
    (PRETRAIN, 100, 10, None, []),  # linear warmup, cosine to 10%
    (PRETRAIN, 100, 10, 80, []),  # decay over 80 steps, then the minimum
    (PRETRAIN, 100, None, None, []),  # the recipe's warmup (2000 steps), shortened to the run
    (PRETRAIN_CODE, 200, None, None, ["--model-size", "14b"]),  # the recipe's 3% of the run, then constant
    (SFT_CODE, 200, None, None, ["--model-size", "7b"]),  # 3% on a cosine, then constant
    (PRETRAIN, 50, None, None, ["--lr-warmup-fraction", "0.2", "--lr-decay-style", "linear"]),
], ids=["warmup", "decay-horizon", "recipe-warmup", "code-qwen", "code-qwen-chat", "fraction"])
def test_samples_and_tokens_give_the_schedule_of_the_same_steps(recipe, steps, warmup, decay, extra):
    curves = {}
    for unit, flags in in_units(steps, warmup, decay).items():
        cfg, curves[unit] = lr_curve(recipe, ["--seq-length", str(SEQ), *extra, *flags], gbs=GBS)
        assert cfg.train.train_iters == steps, unit
        assert cfg.train.train_samples == (None if unit == "iters" else steps * GBS), unit
    assert curves["iters"][steps] > 0 and len({curves["iters"][1], curves["iters"][steps // 2]}) == 2
    for unit in ("samples", "tokens"):
        for step in range(steps + 1):  # step by step, to the last bit
            assert curves[unit][step] == curves["iters"][step], (unit, step)


def test_report_token_budgets_resolve_to_steps_of_four_million_tokens():
    """2.2T/2.4T/3.0T tokens (report Table 1) in 2048 x 2048-token steps: whole steps, the rest dropped, as
    Megatron-LM's --train-samples does; the schedule decays over the whole budget."""
    for size, tokens, steps in (("1.8b", "2.2e12", 524_520), ("7b", "2.4e12", 572_204), ("14b", "3.0e12", 715_255)):
        cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", size, "--train-tokens", tokens])
        t = cfg.train
        assert t.train_iters == steps == int(float(tokens)) // (2048 * 2048), size
        assert t.train_samples == int(float(tokens)) // 2048
        assert t.optim.lr_decay_samples == t.train_samples and t.optim.lr_warmup_samples == 2000 * 2048


@pytest.mark.parametrize("flags, message", [
    (["--train-iters", "10", "--train-samples", "40"], "--train-iters contradicts --train-samples"),
    (["--train-samples", "400", "--lr-warmup-iters", "10"], "--lr-warmup-iters counts in another unit than "
                                                            "--train-samples"),
    (["--train-iters", "100", "--lr-decay-tokens", "1000"], "--lr-decay-tokens counts in another unit than "
                                                            "--train-iters"),
    (["--lr-warmup-samples", "40"], "--lr-warmup-samples counts in another unit than --train-iters"),
    (["--train-tokens", "64"], "--train-tokens 64 is 2 samples of --seq-length 32, less than one step"),
    (["--train-samples", "400", "--lr-warmup-samples", "40", "--lr-warmup-tokens", "64"],
     "--lr-warmup-samples contradicts --lr-warmup-tokens"),
    (["--train-samples", "400", "--lr-warmup-samples", "400"], "LR warmup of 400 samples does not end before the "
                                                               "decay horizon (400 samples)"),
])
def test_budget_in_mixed_units_is_refused_naming_the_flags(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_run_config(PRETRAIN, ["--mock-data", "--seq-length", str(SEQ), "--global-batch-size", str(GBS), *flags])


def test_token_counts_take_scientific_notation_and_refuse_fractions(capsys):
    assert parse_run_config(PRETRAIN, ["--mock-data", "--seq-length", "1000", "--global-batch-size", "2",
                                       "--train-tokens", "1e5"]).train.train_iters == 50
    with pytest.raises(SystemExit) as exit_info:
        parse_run_config(PRETRAIN, ["--mock-data", "--train-tokens", "1.5"])
    assert exit_info.value.code == 2
    assert "--train-tokens: invalid count value: '1.5'" in capsys.readouterr().err
