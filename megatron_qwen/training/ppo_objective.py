"""The pieces of PPO's objective as plain functions on tensors (docs/ppo.md; report section 3.2.2, docs/qwen.md
section 12).

Every per-token tensor is [batch, seq] in the training step's alignment: position ``i`` holds what belongs to
the token at ``i + 1`` (its log-probability, read from the logits at ``i``; the value of the state before it,
the value head's output at ``i``), and ``mask`` is 1 on the positions that predict a response token. A response
is one episode: its reward is the reward model's score at its end, plus the per-token KL penalty to the
reference (Ouyang et al. 2022, eq. 2); advantages are GAE's (Schulman et al. 2016) over the response, with no
value after its last token; the losses are PPO's clipped surrogate and clipped value loss (Schulman et al.
2017, eq. 7, and the value clipping of its reference implementation, baselines' ppo2), per token.
"""

from dataclasses import dataclass

import torch


def kl_to_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per token, log pi(y_t) - log pi_ref(y_t): the sampled estimate of the KL to the reference (0 off ``mask``)."""
    return (logprobs.float() - ref_logprobs.float()) * mask


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per token: -kl_coef x KL, and each response's (normalised) score [batch] added at its last token."""
    rewards = -kl_coef * kl * mask
    last = last_positions(mask)
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.float()
    return rewards


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each row's last position with mask 1 [batch] (every row has one)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).amax(dim=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) per token: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1},
    over each row's masked positions (contiguous), V and A zero after the last; returns = A + V. 0 off ``mask``."""
    rewards, values, mask = rewards.float(), values.float() * mask, mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        next_value = torch.where(mask[:, t].bool(), values[:, t], next_value)
        next_advantage = torch.where(mask[:, t].bool(), advantage, next_advantage)
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (loss, 1 where the clipped term is the one taken): max(-A r, -A clip(r, 1-eps, 1+eps)) with
    r = exp(log pi - log pi_old)."""
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (loss, 1 where the clipped term is the one taken): 0.5 max((V - R)^2, (V_clip - R)^2), V_clip
    the new value kept within ``clip`` of the rollout's."""
    values, old_values = values.float(), old_values.float()
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


@dataclass
class RunningMean:
    """The reward's running mean over every score seen (report section 3.2.2: "normalize the reward based on the
    running mean"); normalise() first takes the batch in, then subtracts the mean. Its two numbers are checkpointed."""

    count: int = 0
    mean: float = 0.0

    def update(self, total: float, n: int) -> None:
        """Take in ``n`` scores summing to ``total`` (the global batch's)."""
        if n:
            self.mean += (total - n * self.mean) / (self.count + n)
            self.count += n

    def normalise(self, scores: torch.Tensor, total: float, n: int) -> torch.Tensor:
        self.update(total, n)
        return scores.float() - self.mean
