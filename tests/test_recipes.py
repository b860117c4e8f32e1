"""Recipe defaults follow the Qwen report, the LR schedules are the ones it describes, and docs/launching.md
states the recipes' values."""

import math
import re

import pytest
from conftest import REPO

from megatron_qwen.config.recipes import PRETRAIN, PRETRAIN_CODE, RECIPES, SFT, SFT_CODE, SFT_MATH
from megatron_qwen.training.arguments import build_parser, parse_run_config
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


def test_chat_sft_warms_up_for_1430_steps_then_holds_2e_6():
    """The report's chat SFT: 4000 steps, linear warmup over 1430 steps to 2e-6, then constant."""
    cfg, lr = lr_curve(SFT, [], gbs=128)
    peak = 2e-6
    assert len(lr) - 1 == cfg.train.train_iters == 4000  # the schedule spans the report's 4000 steps
    assert lr[0] == 0.0
    assert lr[1] == pytest.approx(peak / 1430)  # linear warmup, hand-computed
    assert lr[715] == pytest.approx(peak / 2)
    assert lr[1429] == pytest.approx(peak * 1429 / 1430) and lr[1429] < peak
    assert all(lr[i] == pytest.approx(peak, rel=1e-12) for i in range(1430, 4001))


def test_math_sft_holds_2e_5_to_step_50000():
    """Math-Qwen SFT: peak 2e-5, never decayed, over the report's 50,000 steps."""
    cfg, lr = lr_curve(SFT_MATH, [], gbs=128)
    peak = 2e-5
    assert len(lr) - 1 == cfg.train.train_iters == 50_000
    values = [lr[i] for i in range(50_001)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # warmup only: no decay anywhere
    assert max(values) == pytest.approx(peak) and values[-1] == pytest.approx(peak)
    assert values[25_000] == pytest.approx(peak)


@pytest.mark.parametrize("size, peak", [("7b", 1e-5), ("14b", 2e-6)])
def test_code_qwen_chat_rises_on_a_cosine_over_three_percent_then_holds(size, peak):
    """Code-Qwen-Chat (report section 4.2): AdamW (0.9, 0.95, 1e-8), the peak LR of the size reached over 3%
    of the steps on a cosine curve, then constant; from Code-Qwen's weights, on ChatML data."""
    cfg, lr = lr_curve(SFT_CODE, ["--model-size", size], gbs=128)
    o = cfg.train.optim
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps) == (0.9, 0.95, 1e-8)
    assert cfg.checkpoint.finetune and cfg.data.data_format == "chatml"
    steps = cfg.train.train_iters
    warmup = round(0.03 * steps)
    assert o.lr_warmup_iters == warmup == 120
    for i in range(steps + 1):  # hand-computed: half a cosine from 0 up to the peak, then the peak
        want = peak * 0.5 * (1 - math.cos(math.pi * i / warmup)) if i <= warmup else peak
        assert lr[i] == pytest.approx(want, rel=1e-12, abs=1e-18), i
    assert lr[warmup // 2] == pytest.approx(peak / 2)  # a line would be there too; the shape differs around it
    assert lr[warmup // 4] == pytest.approx(peak * (1 - math.sqrt(0.5)) / 2) and lr[warmup // 4] < peak / 4


def test_sft_flags_override_the_recipe():
    cfg, lr = lr_curve(SFT, ["--lr", "1e-5", "--lr-warmup-iters", "10", "--train-iters", "40",
                             "--hidden-dropout", "0"], gbs=4)
    assert lr[5] == pytest.approx(1e-5 / 2)
    assert all(lr[i] == pytest.approx(1e-5) for i in range(10, 41))
    assert cfg.build.hidden_dropout == 0.0  # overridden ...
    default = parse_run_config(SFT, ["--mock-data"])
    assert cfg.build.attention_dropout == default.build.attention_dropout > 0  # ... and the other kept


def test_short_sft_run_shortens_the_warmup_to_reach_its_peak():
    """A run shorter than the recipe's 1430 warmup steps still reaches its peak LR, by its last step."""
    _, lr = lr_curve(SFT, ["--train-iters", "100"], gbs=4)
    values = [lr[i] for i in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(2e-6) and values[50] < 2e-6


def test_sft_help_shows_the_values_the_job_uses():
    """--help states the recipe's peak LR and global batch, and they are the ones a run gets."""
    for recipe in (SFT, SFT_MATH):
        help_text = " ".join(build_parser(recipe).format_help().split())
        t = parse_run_config(recipe, ["--mock-data"]).train
        lr = re.search(r"--lr LR peak LR \(recipe: ([^)]+)\)", help_text)
        gbs = re.search(r"sequences per step \(recipe: (\d+)", help_text)
        assert lr and gbs, help_text
        assert float(lr.group(1)) == t.optim.lr and int(gbs.group(1)) == t.global_batch_size


def test_pretrain_batch_is_four_million_tokens_for_published_sizes():
    for size in ("1.8b", "7b", "14b"):
        t = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", size]).train
        assert t.global_batch_size * t.seq_length == 2048 * 2048  # ~4M tokens
    assert parse_run_config(PRETRAIN, ["--mock-data", "--global-batch-size", "16"]).train.global_batch_size == 16


NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+)"  # 2048, 50,000
LR = r"(\d+e-\d+)"


def stated_claims(r):
    """What a cell of docs/launching.md's job table may state, each as (pattern, check of its groups)."""
    per_size_lr = {size.upper(): v["lr"] for size, v in r.per_size.items() if "lr" in v}
    per_size_tokens = {v["global_batch_size"] * r.seq_length for v in r.per_size.values() if "global_batch_size" in v}
    return [
        (rf"LR {LR} \((\w+)\) / {LR} \((\w+)\)",
         lambda a, s, b, t: {s: float(a), t: float(b)} == per_size_lr),
        (rf"LR {LR}", lambda v: float(v) == r.lr),
        (rf"seq {NUMBER}", lambda v: int(v) == r.seq_length),
        (rf"batch {NUMBER} pairs", lambda v: 2 * int(v) == r.global_batch_size and r.data_format == "pairs"),
        (rf"batch {NUMBER}", lambda v: int(v) == r.global_batch_size),
        (r"(\d+)M-token batches", lambda v: per_size_tokens == {int(v) * 2**20}),
        (rf"warmup {NUMBER}", lambda v: int(v.replace(",", "")) == r.lr_warmup_iters),
        (r"(\d+)% warmup", lambda v: int(v) / 100 == r.lr_warmup_fraction),
        (r"on a cosine", lambda: r.lr_warmup_style == "cosine"),
        (r"cosine to (\d+)%", lambda v: r.lr_decay_style == "cosine" and int(v) / 100 == r.min_lr_ratio),
        (r"no decay", lambda: r.lr_decay_style == "constant" and r.min_lr_ratio == 1.0),
        (rf"{NUMBER} steps", lambda v: int(v.replace(",", "")) == r.train_iters),
        (r"dropout (\d\.\d+)", lambda v: float(v) == r.hidden_dropout == r.attention_dropout),
        (r"ChatML", lambda: r.data_format == "chatml"),
        (r"comparison pairs", lambda: r.data_format == "pairs" and r.head == "reward"),
        (r"one epoch", lambda: r.train_iters is None),
        (r"weights only", lambda: r.finetune),
    ]


def test_launching_md_states_each_recipes_values():
    """docs/launching.md's job table restates config/recipes.py: every figure in a job's cell is one of
    the patterns above and equals its recipe's value, so the table cannot go stale unnoticed."""
    text = (REPO / "docs" / "launching.md").read_text(encoding="utf-8")
    cells = dict(re.findall(r"^\| [^|]+ \| `megatron_qwen\.(\w+)` \| (.+) \|$", text, re.MULTILINE))
    assert set(cells) == set(RECIPES), cells
    for name, cell in cells.items():
        rest = cell
        for pattern, check in stated_claims(RECIPES[name]):
            for m in re.finditer(pattern, rest):
                assert check(*m.groups()), f"docs/launching.md, {name}: {m.group(0)!r} is not config/recipes.py's"
            rest = re.sub(pattern, "", rest)
        assert not re.search(r"\d", rest), f"docs/launching.md, {name}: unchecked figures in {rest!r}"


def test_reward_model_holds_3e_6_for_one_epoch_of_64_pair_batches(tmp_path):
    """The report's reward model: constant LR 3e-6, 64 pairs (128 sequences) per step at 2048 tokens, one epoch:
    as many steps as the training split's pairs fill (a pair shard of 1000 pairs, 900 in the train split)."""
    from megatron_qwen.config.recipes import REWARD
    from megatron_qwen.data.shards import IndexedShardWriter

    with IndexedShardWriter(str(tmp_path / "p_pairs_document")) as w:
        w.add_documents([5, 151645] * 2000, [2] * 2000)
    cfg = parse_run_config(REWARD, ["--data-path", str(tmp_path / "p_pairs_document"), "--split", "90,10,0"])
    t = cfg.train
    assert (t.global_batch_size, t.micro_batch_size, t.seq_length) == (128, 2, 2048)
    assert t.train_iters == 900 // 64 and cfg.build.head == "reward" and cfg.checkpoint.finetune
    opt = _Optimizer()
    sched = build_scheduler(opt, t.optim, t.train_iters, t.global_batch_size)
    for _ in range(t.train_iters):
        sched.step(increment=t.global_batch_size)
        assert opt.param_groups[0]["lr"] == pytest.approx(3e-6, rel=1e-12)
    assert parse_run_config(REWARD, ["--train-iters", "5", "--data-path", "x"]).train.train_iters == 5
