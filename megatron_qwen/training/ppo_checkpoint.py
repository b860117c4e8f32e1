"""PPO's checkpoints: the megatron engine's (training/megatron_checkpoint.py: staged writes, the tracker, async
saves, RNG per rank, any layout at resume) holding everything PPO trains: the policy and the value model, each
with its optimizer and LR schedule, under the key prefixes "policy." and "value.", and the reward normaliser's
running mean. The frozen models are not saved: the reference is --load's SFT checkpoint and the reward model
--reward-model's, read again at a resume (docs/ppo.md)."""

import dataclasses

import torch.distributed as dist

from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.megatron_checkpoint import (
    MegatronCheckpointer,
    model_and_optimizer_state,
    restore_model_and_optimizer,
)
from megatron_qwen.training.ppo_objective import RunningMean
from megatron_qwen.training.ppo_update import Trained


class PPOCheckpointer(MegatronCheckpointer):
    """The policy and the value model as the trained state."""

    def __init__(self, cfg: RunConfig, policy: Trained, value: Trained, normaliser: RunningMean):
        super().__init__(cfg, policy.model, policy.optimizer, policy.scheduler)
        self.trained = {"policy": policy, "value": value}
        self.normaliser = normaliser

    def load(self) -> TrainState | None:
        """Resume the run saved under --save; None for a first start (a PPO job's --load is its SFT policy, which
        ppo_models.start_weights reads)."""
        return self.resume()

    def trained_models(self) -> list:
        return [t.model for t in self.trained.values()]

    def trained_state(self, is_loading: bool, with_optimizer: bool, metadata: dict) -> dict:
        return {name: model_and_optimizer_state(t.model, t.optimizer if with_optimizer else None, is_loading,
                                                metadata, prefix=f"{name}.") for name, t in self.trained.items()}

    def trained_common_state(self) -> dict:
        return {"schedulers": {name: t.scheduler.state_dict() for name, t in self.trained.items()},
                "reward_normaliser": dataclasses.asdict(self.normaliser)}

    def restore_trained_state(self, loaded: dict, common: dict, with_optimizer: bool) -> str:
        what = []
        for name, t in self.trained.items():
            restored = restore_model_and_optimizer(self.cfg, loaded[name], common["schedulers"][name], t.model,
                                                   t.optimizer, t.scheduler, with_optimizer, f"{name}.")
            what.append(f"{name} {restored}")
        saved = common["reward_normaliser"]
        self.normaliser.count, self.normaliser.mean = saved["count"], saved["mean"]
        if dist.get_rank() == 0:
            print(f" reward running mean {self.normaliser.mean:.6g} over {self.normaliser.count} scores", flush=True)
        return ", ".join(what)
