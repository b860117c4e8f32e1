"""One way to build a model: rebuilt with build_model() from the configuration a checkpoint
stores, it is bit for bit the model that trained and saved it."""

import subprocess
import sys

from conftest import REPO, quiet_env

SCRIPT = r"""
import dataclasses, sys, torch
from megatron.core import dist_checkpointing
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model, unwrap
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.step import train_step

root = sys.argv[1]
cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--num-layers", "2", "--seed", "7",
                                  "--seq-length", "16", "--micro-batch-size", "2", "--global-batch-size", "2",
                                  "--lr", "1e-2", "--lr-warmup-iters", "0", "--train-iters", "2", "--save", root])
init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
model, optimizer, scheduler = build_model_and_optimizer(cfg)
g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, cfg.model.vocab_size, (2, 17), generator=g)
batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(2, 16),
         "position_ids": torch.arange(16).expand(2, 16), "attention_mask": None}
state = TrainState()
for _ in range(2):
    train_step(model, optimizer, scheduler, [iter([batch])], 1, 16, 2, 2, torch.device("cpu"))
    state.advance(2, True)
MegatronCheckpointer(cfg, model, optimizer, scheduler).save(state)
trained = {k: v.detach().clone() for k, v in unwrap(model[0]).named_parameters()}
destroy_distributed()

ckpt = iteration_dir(root, 2)
stored = RunConfig.from_dict(dist_checkpointing.load_common_state_dict(ckpt)["run_config"])
assert stored == cfg, "the stored configuration is not the run's"
init_distributed(stored.parallel, stored.model.num_layers, stored.build.seed)
(rebuilt,) = build_model(stored.model, stored.parallel, stored.build)
fresh = {k: v.detach().clone() for k, v in rebuilt.named_parameters()}
load_weights(ckpt, [rebuilt])
params = dict(rebuilt.named_parameters())
assert params.keys() == trained.keys()
for name, value in trained.items():
    assert params[name].dtype == value.dtype and torch.equal(params[name], value), name
    assert not torch.equal(fresh[name], value) or "layernorm" in name, f"{name} did not train"
print("REBUILT_EQUALS_TRAINED", len(trained))
"""


def test_model_rebuilt_from_checkpoint_config_is_the_trained_one(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")], cwd=REPO, env=quiet_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "REBUILT_EQUALS_TRAINED" in proc.stdout
