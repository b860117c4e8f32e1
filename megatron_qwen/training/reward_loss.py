"""The reward model's loss: the pairwise ranking loss of the Qwen report's reward model (section 3.2.1;
docs/qwen.md section 11), in megatron-core's per-item loss form.

Over pairs (r_chosen, r_rejected) of rewards read at the end token: loss = -log sigmoid(r_chosen - r_rejected),
averaged over the pairs of the global batch (its sum per micro-batch, divided once by the global pair count, as
the language-model loss is by the token count: training/step.py). Reported with it, per pair: accuracy, the
share of pairs whose chosen reward is strictly higher (a tie counts as wrong), and the mean margin
r_chosen - r_rejected.
"""

import torch
import torch.nn.functional as F

from megatron_qwen.model.reward import end_token_values


def ranking_terms(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: (loss, 1 where chosen > rejected else 0, margin), fp32."""
    margin = r_chosen.float() - r_rejected.float()
    return -F.logsigmoid(margin), (margin > 0).float(), margin


def pairwise_ranking_loss(batch: dict, values: torch.Tensor):
    """(loss sum, pairs, report) of one micro-batch: ``values`` [b, s] from the reward model, ``batch``'s
    ``end_index`` [b] each sequence's end token, the sequences chosen, rejected, chosen, ... (data/pairs.py)."""
    rewards = end_token_values(values, batch["end_index"]).view(-1, 2)
    loss, correct, margin = ranking_terms(rewards[:, 0], rewards[:, 1])
    loss_sum = loss.sum()
    pairs = torch.tensor(len(loss), dtype=torch.int, device=loss.device)
    report = torch.stack([loss_sum.detach(), pairs.float(), correct.sum(), margin.detach().sum()])
    return loss_sum, pairs, {"reward loss": report}
