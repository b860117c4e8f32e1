"""PPO's objective pieces (training/ppo_objective.py) against the formulas written out here, element by element in
plain Python: GAE (Schulman et al. 2016, as PPO uses it: Schulman et al. 2017 eq. 11-12), the clipped surrogate
(Schulman et al. 2017 eq. 7), the clipped value loss (baselines' ppo2, the reference implementation), the KL
penalty in the reward (Ouyang et al. 2022 eq. 2) and the running mean."""

import math

import pytest
import torch

from megatron_qwen.training.ppo_objective import (
    RunningMean,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_to_reference,
    token_rewards,
)

# Two rows of 7 positions; row 0's response predicts at 2..5, row 1's at 1..3 (prompt before, padding after).
MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0]], dtype=torch.float32)
g = torch.Generator().manual_seed(0)
REWARDS = torch.randn(2, 7, generator=g)
VALUES = torch.randn(2, 7, generator=g)


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V after the last step 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_advantages_and_returns(gamma, lam):
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma, lam)
    for row in range(2):
        steps = [t for t in range(7) if MASK[row, t]]
        want = reference_gae([REWARDS[row, t].item() for t in steps], [VALUES[row, t].item() for t in steps],
                             gamma, lam)
        for t, a in zip(steps, want):
            assert advantages[row, t].item() == pytest.approx(a, abs=1e-5)
            assert returns[row, t].item() == pytest.approx(a + VALUES[row, t].item(), abs=1e-5)
        off = [t for t in range(7) if not MASK[row, t]]
        assert all(advantages[row, t] == 0 and returns[row, t] == 0 for t in off)


def test_gae_with_lambda_one_and_gamma_one_is_the_return_to_go_minus_the_value():
    advantages, returns = gae(REWARDS, VALUES, MASK, 1.0, 1.0)
    steps = [2, 3, 4, 5]
    for t in steps:
        to_go = sum(REWARDS[0, u].item() for u in steps if u >= t)
        assert returns[0, t].item() == pytest.approx(to_go, abs=1e-5)


def test_clipped_policy_loss():
    logp = torch.tensor([-1.0, -0.5, -2.0, -0.1, -3.0])
    old = torch.tensor([-1.0, -1.0, -1.0, -0.4, -2.0])
    adv = torch.tensor([0.5, 1.0, -1.0, -2.0, 2.0])
    eps = 0.2
    loss, clipped = clipped_policy_loss(logp, old, adv, eps)
    for i in range(5):
        r = math.exp(logp[i].item() - old[i].item())
        a = adv[i].item()
        surrogate = min(r * a, min(max(r, 1 - eps), 1 + eps) * a)  # L^CLIP, maximised
        assert loss[i].item() == pytest.approx(-surrogate, rel=1e-6)
        assert clipped[i].item() == float(min(max(r, 1 - eps), 1 + eps) * a < r * a)
    assert clipped.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]  # ratio e^0.5 with A > 0 and e^-1 with A < 0: clipped


def test_clipped_value_loss():
    values = torch.tensor([1.0, 0.0, 2.0, -1.0])
    old = torch.tensor([0.5, 0.1, 1.0, -1.05])
    returns = torch.tensor([2.0, -1.0, 0.0, 3.0])
    c = 0.15
    loss, clipped = clipped_value_loss(values, old, returns, c)
    for i in range(4):
        v, o, R = values[i].item(), old[i].item(), returns[i].item()
        v_clip = o + min(max(v - o, -c), c)
        assert loss[i].item() == pytest.approx(0.5 * max((v - R) ** 2, (v_clip - R) ** 2), rel=1e-6)
        assert clipped[i].item() == float((v_clip - R) ** 2 > (v - R) ** 2)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 0.0]  # the first moved 0.5 towards its return, past the clip


def test_kl_penalty_and_score_at_the_last_response_token():
    logp = torch.randn(2, 7, generator=g)
    ref = torch.randn(2, 7, generator=g)
    scores = torch.tensor([1.5, -0.5])
    beta = 0.04
    kl = kl_to_reference(logp, ref, MASK)
    rewards = token_rewards(scores, kl, MASK, beta)
    for row, last in ((0, 5), (1, 3)):
        for t in range(7):
            want = -beta * (logp[row, t] - ref[row, t]).item() * MASK[row, t].item()
            want += scores[row].item() if t == last else 0.0
            assert rewards[row, t].item() == pytest.approx(want, abs=1e-6)


def test_running_mean_over_every_score_seen():
    normaliser, seen = RunningMean(), []
    for batch in ([1.0, 3.0], [10.0], [-2.0, 0.5, 4.0]):
        scores = torch.tensor(batch)
        normalised = normaliser.normalise(scores, sum(batch), len(batch))
        seen += batch
        mean = sum(seen) / len(seen)
        assert normaliser.mean == pytest.approx(mean) and normaliser.count == len(seen)
        assert normalised.tolist() == pytest.approx([s - mean for s in batch])
