"""PPO's update on a scored rollout (training/ppo_rollout.py): the rewards (KL penalty, running-mean
normalisation), GAE's advantages and returns, then one optimizer step of the value model on the clipped value
loss and, after the value-only warm-up, one of the policy on the clipped surrogate plus the pretraining term, each
through training/step.py's forward_backward and apply_update (any TP/PP/DP layout; docs/ppo.md).

Both losses are means over the global batch's response tokens, as the language-model loss is over its tokens.
The pretraining term (Ouyang et al. 2022's PPO-ptx) is --ptx-coef x the mean language-model loss over the
iteration's pretraining micro-batches: each of their tokens is weighted by (response tokens / pretraining tokens),
both global, and counts for no token, so that megatron-core's one division by the global count gives
mean(PPO) + coef x mean(pretraining).
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config.ppo import PPOSettings
from megatron_qwen.training.anomalies import StepHealth, Verdict
from megatron_qwen.training.ppo_objective import (
    RunningMean,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_to_reference,
    token_rewards,
)
from megatron_qwen.training.ppo_rollout import Rollout
from megatron_qwen.training.step import Objective, apply_update, forward_backward


@dataclass
class Trained:
    """A trained model of the PPO job: its chunks, optimizer and LR schedule (training/megatron_engine.py's)."""

    model: list
    optimizer: object
    scheduler: object


def _policy_loss(batch: dict, output: torch.Tensor, clip: float, ptx_coef: float):
    """A rollout micro-batch's clipped surrogate, or a pretraining micro-batch's weighted language-model loss;
    report [loss sum, response tokens, clipped tokens, weighted pretraining loss]."""
    mask = batch["loss_mask"].float()
    if batch.get("advantages") is None:  # a pretraining micro-batch
        weighted = (output.float() * mask).sum() * batch["ptx_weight"].float()[0]
        zero = torch.zeros((), device=output.device)
        report = torch.stack([ptx_coef * weighted.detach(), zero, zero, weighted.detach()])
        return ptx_coef * weighted, zero.int(), {"policy loss": report}
    loss, clipped = clipped_policy_loss(-output.float(), batch["old_logprobs"], batch["advantages"], clip)
    loss_sum = (loss * mask).sum()
    report = torch.stack([loss_sum.detach(), mask.sum(), (clipped * mask).sum(), torch.zeros_like(loss_sum)])
    return loss_sum, mask.sum().int(), {"policy loss": report}


def _value_loss(batch: dict, values: torch.Tensor, clip: float):
    mask = batch["loss_mask"].float()
    loss, clipped = clipped_value_loss(values, batch["old_values"], batch["returns"], clip)
    loss_sum = (loss * mask).sum()
    return loss_sum, mask.sum().int(), {"value loss": torch.stack([loss_sum.detach(), mask.sum(),
                                                                   (clipped * mask).sum()])}


def policy_objective(ppo: PPOSettings) -> Objective:
    return Objective(("labels", "loss_mask", "old_logprobs", "advantages", "ptx_weight"),
                     partial(_policy_loss, clip=ppo.policy_clip, ptx_coef=ppo.ptx_coef),
                     lambda mb: mb["loss_mask"].sum(), "policy loss", ("policy clip fraction", "ptx loss"))


def value_objective(ppo: PPOSettings) -> Objective:
    return Objective(("loss_mask", "old_values", "returns"), partial(_value_loss, clip=ppo.value_clip),
                     lambda mb: mb["loss_mask"].sum(), "value loss", ("value clip fraction",))


def _reporting() -> bool:
    """Whether this rank's rollout figures enter the sums: the last pipeline stage's first tensor-parallel rank."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def returns_and_figures(rollout: Rollout, normaliser: RunningMean, ppo: PPOSettings,
                        device) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """(advantages, returns) on the last pipeline stage (None elsewhere), and the iteration's rollout figures
    over the global batch (every rank). ``normaliser`` takes the batch's scores in, on every rank alike; a batch
    with a non-finite score leaves it as it was (and its update is skipped: the losses are not finite)."""
    mask = rollout.mask
    local = torch.zeros(6, dtype=torch.float64)
    kl = None
    if rollout.scores is not None:
        kl = kl_to_reference(rollout.logprobs, rollout.ref_logprobs, mask)
        if _reporting():
            local += torch.tensor([rollout.scores.sum(), len(rollout.scores), kl.sum(), (rollout.entropy * mask).sum(),
                                   mask.sum(), int(not torch.isfinite(rollout.scores).all())], dtype=torch.float64)
    local = local.to(device)
    dist.all_reduce(local)
    total, n, kl_sum, entropy_sum, tokens, nonfinite = local.tolist()
    if not nonfinite:
        normaliser.update(total, int(n))
    figures = {"reward": total / n, "normalized reward": total / n - normaliser.mean, "kl": kl_sum / n,
               "entropy": entropy_sum / tokens, "response length": tokens / n}
    if kl is None:
        return None, None, figures
    rewards = token_rewards(rollout.scores - normaliser.mean, kl, mask, ppo.kl_coef)
    advantages, returns = gae(rewards, rollout.values, mask, ppo.gamma, ppo.lam)
    return advantages, returns, figures


def ptx_weight(rollout: Rollout, ptx_batches: list[dict], device) -> float:
    """Response tokens / pretraining tokens over the global batch (every rank knows both masks)."""
    counts = torch.tensor([rollout.mask.sum(), sum(b["loss_mask"].sum() for b in ptx_batches)], dtype=torch.float64,
                          device=device)
    dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    return float(counts[0] / counts[1].clamp(min=1))


def step_model(trained: Trained, objective: Objective, batches: list[dict], seq_length: int, global_batch_size: int,
               health: StepHealth, device) -> tuple[float | None, float | None, bool, Verdict, dict]:
    """One optimizer step of ``trained`` on ``batches`` with ``objective``'s loss, skipped on a verdict of
    ``health`` (a non-finite loss) or a non-finite gradient norm: (loss, grad norm, applied, verdict, figures)."""
    figures: dict = {}
    local, loss = forward_backward(trained.model, trained.optimizer, [iter(batches) for _ in trained.model],
                                   len(batches), seq_length, batches[0]["tokens"].shape[0], device, figures,
                                   objective)
    verdict = health.judge(local, loss)
    if verdict.skip:
        return loss, None, False, verdict, figures
    grad_norm, applied = apply_update(trained.optimizer, trained.scheduler, global_batch_size)
    return loss, grad_norm, applied, verdict, figures
