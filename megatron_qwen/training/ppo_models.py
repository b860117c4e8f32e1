"""PPO's four models on one layout (docs/ppo.md, "where the models live"):

- the policy, from --load's SFT weights, trained (the megatron engine's model, optimizer and schedule, LR --lr);
- the value model, the reward model's network and scalar head, from --reward-model's weights, trained (LR
  --value-lr): the head that scores a whole response at its end token values every prefix;
- the reference, a frozen copy of --load's SFT weights;
- the reward model, --reward-model's, frozen.

The frozen two are placed by the trained models' rule: built on the same process groups, so each rank holds
the same TP slices of the same layers of all four, and every pass (rollout, scoring, update) runs on one layout
with no resharding; they hold no gradients, no optimizer state and no DDP buffers.
"""

import dataclasses
from dataclasses import dataclass

import torch

from megatron_qwen.checkpointing.resolver import starting_point
from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import CheckpointSettings
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import on_gpu
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.ppo_preflight import reward_model_config
from megatron_qwen.training.ppo_update import Trained
from megatron_qwen.training.starting_point import load_weights_only


@dataclass
class PPOModels:
    policy: Trained
    value: Trained
    reference: list  # frozen model chunks
    reward: list


def value_config(cfg: RunConfig, shape: QwenModelConfig) -> RunConfig:
    """The value (and reward) model's run: the reward model's ``shape`` and head, the policy's layout, --value-lr."""
    lr = cfg.ppo.value_lr
    optim = dataclasses.replace(cfg.train.optim, lr=lr, min_lr=lr, lr_warmup_iters=0, lr_decay_style="constant")
    return dataclasses.replace(cfg, model=shape, build=dataclasses.replace(cfg.build, head="reward"),
                               train=dataclasses.replace(cfg.train, optim=optim))


def _frozen(cfg: RunConfig, initialize: bool) -> list:
    chunks = build_model(cfg.model, cfg.parallel, cfg.build, initialize=initialize)
    for chunk in chunks:
        chunk.requires_grad_(False)
        chunk.eval()
    return [c.cuda(torch.cuda.current_device()) for c in chunks] if on_gpu() else chunks


def build_ppo_models(cfg: RunConfig) -> PPOModels:
    """The four models, the trained ones with fresh optimizers; weights are start_weights' (or a resume's)."""
    value_cfg = value_config(cfg, reward_model_config(cfg.ppo.reward_model).model)
    policy = Trained(*build_model_and_optimizer(cfg, initialize=not cfg.checkpoint.finetune))
    value = Trained(*build_model_and_optimizer(value_cfg, initialize=False))
    return PPOModels(policy, value, _frozen(cfg, initialize=not cfg.checkpoint.finetune),
                     _frozen(value_cfg, initialize=False))


def load_frozen(cfg: RunConfig, models: PPOModels) -> None:
    """The reference from --load (with --no-finetune it keeps the fresh weights the policy starts from) and the
    reward model from --reward-model: at a first start and at every resume alike."""
    if cfg.checkpoint.finetune:
        _load_weights(cfg.checkpoint.load, models.reference)
    _load_weights(cfg.ppo.reward_model, models.reward)


def _load_weights(path: str, chunks) -> str:
    """Fill ``chunks`` with the weights under ``path`` (its newest loadable checkpoint); what was read."""
    return load_weights_only(starting_point(CheckpointSettings(load=path, finetune=True)), chunks)


def start_weights(cfg: RunConfig, models: PPOModels) -> str:
    """A first start: the policy from --load (without it, --no-finetune: fresh weights drawn from --seed, the
    reference's too), the value model from --reward-model; what was read, for the log."""
    policy = "fresh weights (--seed)"
    if cfg.checkpoint.finetune:
        policy = _load_weights(cfg.checkpoint.load, models.policy.model)
    value = _load_weights(cfg.ppo.reward_model, models.value.model)
    for trained in (models.policy, models.value):
        trained.optimizer.reload_model_params()  # fp32 main copies (bf16 runs) were taken before the load
    return f"policy from {policy}, value model from {value}"
