"""python -m megatron_qwen.ppo as a job: bad input refused in one line before any model is built; the value-only
warm-up leaves the policy's weights bit for bit as --load's SFT checkpoint holds them (and its optimizer without
state); a run stopped and resumed ends in the same checkpoint, every tensor equal, as the run that went straight
through, and logs the same figures after the resume; the metrics file holds the figures docs/ppo.md lists, which
tools/plot_metrics.py draws."""

import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch.distributed as dist
from conftest import REPO, load_tool, quiet_env
from ppo_fixtures import ppo_flags, write_pretraining_shard, write_prompts

from megatron_qwen.config.recipes import PPO
from megatron_qwen.training import entry

PROMPTS = ["Name a colour.", "Count to three.", "Say hello.", "What is two plus two?"]
LOGGED = ("value_loss", "policy_loss", "reward", "normalized_reward", "kl", "entropy", "value_clip_fraction",
          "policy_clip_fraction", "response_length", "rollout_tokens_per_sec", "rollout_share", "rollout_seconds",
          "training_seconds")

# The runs, one after another in one process (entry.main leaves no process group behind), then every checkpoint's
# tensors read back; prints one JSON object of findings.
RUNS = r"""
import json, sys, torch
from megatron.core.dist_checkpointing.serialization import load_plain_tensors
from megatron_qwen.config.recipes import PPO
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.training.entry import main

root, checkpoints, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for argv in runs:
    main(PPO, argv)
init_distributed(ParallelSettings(), 2, 0)
saved = {"sft": f"{checkpoints}/sft/iter_0000000", **{name: f"{root}/{name}/iter_{it:07d}" for name, it in
                                                     (("warmup", 2), ("straight", 3), ("resumed", 3))}}
tensors = {name: {k: v for k, v in load_plain_tensors(path).items() if isinstance(v, torch.Tensor)}
           for name, path in saved.items()}
torch.save(tensors, f"{root}/tensors.pt")
destroy_distributed()
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_jobs")
    write_prompts(root / "prompts.jsonl", PROMPTS)
    return root


@pytest.fixture(scope="module")
def runs(root, ppo_checkpoints):
    base = ppo_flags(ppo_checkpoints, str(root / "prompts.jsonl"))
    shard = write_pretraining_shard(root / "pretraining_text_document")
    straight = [*base, "--train-iters", "3", "--value-warmup-iters", "1"]
    runs = [[*base, "--train-iters", "2", "--value-warmup-iters", "2", "--save", str(root / "warmup")],
            [*straight, "--save", str(root / "straight"), "--metrics-file", str(root / "straight.jsonl")],
            *[[*straight, "--save", str(root / "resumed"), "--exit-interval", "2", "--metrics-file",
               str(root / "resumed.jsonl")]] * 2,
            [*base, "--train-iters", "2", "--value-warmup-iters", "1", "--data-path", shard, "--ptx-coef", "0.5",
             "--metrics-file", str(root / "ptx.jsonl")]]
    proc = subprocess.run([sys.executable, "-c", RUNS, str(root), str(ppo_checkpoints), json.dumps(runs)], cwd=REPO,
                          env=quiet_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    import torch

    return torch.load(root / "tensors.pt"), proc.stdout


def test_value_warmup_leaves_the_policy_bit_identical(root, runs):
    import torch

    warmup, sft = runs[0]["warmup"], runs[0]["sft"]  # by global name, layers stacked (the checkpoints' form)
    policy = {k.removeprefix("policy."): v for k, v in warmup.items() if k.startswith("policy.")}
    assert policy.keys() == sft.keys() and len(sft) > 5
    assert all(torch.equal(policy[k], sft[k]) for k in sft)
    def moments(part):
        return [v for k, v in warmup.items() if k.startswith("optimizer.state.exp_avg") and f".{part}." in k]

    assert moments("value") and all(v.abs().sum() == 0 for v in moments("policy"))  # the policy's Adam never stepped
    value_head = warmup["value.reward_head.weight"]
    straight_head = runs[0]["straight"]["value.reward_head.weight"]
    assert not torch.equal(value_head, straight_head)  # the value model did move


def test_resume_continues_exactly(root, runs):
    import torch

    straight, resumed = runs[0]["straight"], runs[0]["resumed"]
    assert straight.keys() == resumed.keys() and any("optimizer" in k for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), [
        k for k in straight if not torch.equal(straight[k], resumed[k])][:5]
    assert not torch.equal(straight["policy.output_layer.weight"], runs[0]["sft"]["output_layer.weight"])  # it moved

    def steps(path):
        return {r["iteration"]: r for r in map(json.loads, open(path)) if "value_loss" in r}

    a, b = steps(root / "straight.jsonl"), steps(root / "resumed.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for it in (1, 2, 3):
        for key in ("value_loss", "policy_loss", "reward", "normalized_reward", "kl", "entropy"):
            assert a[it].get(key) == b[it].get(key), (it, key)
    assert "loaded" in runs[1] and "continuing at iteration 2" in runs[1]


def test_metrics_and_plot(root, runs, tmp_path):
    records = [json.loads(line) for line in open(root / "straight.jsonl")]
    last = records[-1]
    assert all(key in last for key in LOGGED), [k for k in LOGGED if k not in last]
    assert 0 < last["rollout_share"] < 1 and last["rollout_tokens_per_sec"] > 0
    assert "policy_loss" not in records[0]  # the first iteration is the value-only warm-up
    plot = load_tool("plot_metrics")
    assert plot.main(["--metrics-file", str(root / "straight.jsonl"), "--output", str(tmp_path / "ppo.png")]) == 0
    drawn = plot.read_metrics(str(root / "straight.jsonl"), "ppo").steps
    assert {"reward", "kl", "entropy", "policy_loss", "value_loss", "rollout_share"} <= drawn.keys()


def test_pretraining_term_adds_its_coefficient_times_its_loss(root, runs):
    """The first policy step of two runs that differ only in --ptx-coef (the same rollouts: the same weights and
    seeds until then): the logged policy loss differs by the coefficient times the pretraining loss. The run
    without the term is the straight run (--ptx-coef 0 reads no pretraining data; the LRs are constant, so its
    --train-iters changes nothing before its end)."""
    def second(name):
        return [json.loads(line) for line in open(root / f"{name}.jsonl")][1]

    off, on = second("straight"), second("ptx")
    assert on["reward"] == off["reward"] and on["ptx_loss"] > 1  # a language-model loss over random text
    assert on["policy_loss"] == pytest.approx(off["policy_loss"] + 0.5 * on["ptx_loss"], rel=1e-5, abs=1e-6)


def one_line_error(argv: list[str], monkeypatch) -> str:
    """The entry point's stderr for ``argv``: it must exit 2 in one line, before any process group."""
    from megatron_qwen.training import loop, ppo_loop

    def train(cfg, world_size):
        raise AssertionError("a model was about to be built")

    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(ppo_loop, "train_ppo", train)  # the entry point's choice for the PPO job
    monkeypatch.setenv("WORLD_SIZE", "1")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
        entry.main(PPO, argv)
    lines = err.getvalue().strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not dist.is_initialized()
    return lines[0]


def test_bad_input_is_one_line_before_any_model(root, ppo_checkpoints, tmp_path, monkeypatch):
    prompts = str(root / "prompts.jsonl")
    base = ppo_flags(ppo_checkpoints, prompts)

    def with_flag(flag, value, flags=base):
        i = flags.index(flag)
        return [*flags[:i + 1], value, *flags[i + 2:]]

    line = one_line_error(with_flag("--reward-model", str(ppo_checkpoints / "reward_small_vocab")), monkeypatch)
    assert "--reward-model" in line and "vocabulary of 1024" in line
    line = one_line_error(with_flag("--reward-model", str(ppo_checkpoints / "reward_other_tokenizer")), monkeypatch)
    assert "another tokenizer" in line and "other.tiktoken" in line
    long_prompts = write_prompts(tmp_path / "long.jsonl", ["Hi.", "word " * 40])
    line = one_line_error(with_flag("--prompt-data-path", long_prompts), monkeypatch)
    assert f"{long_prompts}:2" in line and "exceeds the context (--seq-length 48)" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    line = one_line_error(with_flag("--prompt-data-path", str(empty)), monkeypatch)
    assert str(empty) in line and "holds no prompts" in line
    line = one_line_error(with_flag("--reward-model", str(ppo_checkpoints / "sft")), monkeypatch)
    assert "holds a language model, not a reward model" in line
