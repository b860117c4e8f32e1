"""What PPO's tests start from: an SFT policy and reward models as checkpoints of ours, and prompt files.

The models are tiny Qwen-vocabulary ones (MODEL), written in one separate process (megatron-core's parallel state
must not leak into pytest's) with weights at unit scale, as tests/test_generate.py draws them, so that an untrained
model still prefers different tokens in different contexts and greedy rollouts are worth comparing:
  sft/                    the policy (language-model head)
  reward/                 the reward model (scalar head), same shape
  reward_small_vocab/     a reward model of the "tiny" preset's 1024-id vocabulary
  reward_other_tokenizer/ a reward model whose run used another qwen.tiktoken (two ranks swapped: other ids)
  sft_weights.pt          the policy's full weights by global name
"""

import json
import subprocess
import sys

from conftest import REPO, quiet_env

MODEL = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176", "--num-layers", "2"]

WRITER = r"""
import dataclasses, sys, torch
from megatron_qwen.checkpointing.weights import save_weights_only
from megatron_qwen.config.recipes import REWARD, SFT
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.tokenizer.files import read_tokenizer_file
from megatron_qwen.training.arguments import parse_run_config

root, model_flags = sys.argv[1], sys.argv[2:]
data, _ = read_tokenizer_file()
lines = data.splitlines()
lines[100], lines[101] = lines[100].split()[0] + b" 101", lines[101].split()[0] + b" 100"
open(f"{root}/other.tiktoken", "wb").write(b"\n".join(lines) + b"\n")
runs = {"sft": (SFT, model_flags, []), "reward": (REWARD, model_flags, []),
        "reward_small_vocab": (REWARD, ["--model-size", "tiny"], []),
        "reward_other_tokenizer": (REWARD, model_flags, ["--tokenizer-model", f"{root}/other.tiktoken",
                                                         "--allow-unpublished-tokenizer"])}
for seed, (name, (recipe, flags, extra)) in enumerate(runs.items()):
    cfg = parse_run_config(recipe, [*flags, *extra, "--mock-data", "--no-finetune", "--train-iters", "1",
                                    "--seed", str(seed + 3)])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    (model,) = build_model(cfg.model, cfg.parallel, cfg.build)
    g = torch.Generator().manual_seed(5 + seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 if p.shape[0] == cfg.model.padded_vocab_size else p.shape[1] ** -0.5, generator=g)
            else:
                p.add_(torch.randn(p.shape, generator=g), alpha=0.1)
    if name == "sft":
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, f"{root}/sft_weights.pt")
    save_weights_only(f"{root}/{name}", 0, model, cfg, "random weights (tests/ppo_fixtures.py)", "random")
    destroy_distributed()
"""


def write_checkpoints(root) -> None:
    proc = subprocess.run([sys.executable, "-c", WRITER, str(root), *MODEL], cwd=REPO, env=quiet_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def write_pretraining_shard(prefix) -> str:
    """A pretraining shard for --ptx-coef: 40 documents of 60 random ids of Qwen's vocabulary."""
    import numpy as np

    from megatron_qwen.data.shards import IndexedShardWriter

    with IndexedShardWriter(str(prefix)) as shard:
        shard.add_documents(np.random.default_rng(0).integers(1, 150_000, 40 * 60), np.full(40, 60))
    return str(prefix)


def write_prompts(path, prompts: list[str]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    return str(path)


def ppo_flags(checkpoints, prompts: str, *extra: str) -> list[str]:
    """A small PPO run from the ``checkpoints`` write_checkpoints wrote (the policy's shape is its --load's):
    4 responses (2 prompts x 2) of up to 6 tokens per iteration."""
    return ["--load", str(checkpoints / "sft"), "--reward-model", str(checkpoints / "reward"),
            "--prompt-data-path", prompts,
            "--seq-length", "48", "--max-new-tokens", "6", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--lr", "1e-4", "--value-lr", "1e-4", "--transformer-impl", "local", *extra]
