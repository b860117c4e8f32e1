"""PPO's rollout: responses sampled from the policy with the KV-cache decoder (inference/generate.py), on the
policy's own TP/PP layout, then scored in four forward passes through megatron-core's schedule: the policy's and
the reference's log-probabilities (and the policy's entropy), the value model's values and the reward model's
score at each response's end token (docs/ppo.md).

A response is the ids generated after its prompt, with the stop id when one was generated (the policy learns to
stop). Each row is right-padded to --seq-length: the policy's sequence (prompt + response) and the reward
model's (prompt + response without its stop id + <|im_end|>, the end token the reward model was trained to score
at: tokenizer/chatml.py). Per-token tensors follow ppo_objective.py's alignment. What the passes compute is known
on the last pipeline stage only, which is where the losses are computed.
"""

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_qwen.inference.generate import Sampling, generate
from megatron_qwen.model.builder import unwrap
from megatron_qwen.model.loss import vocab_parallel_cross_entropy, vocab_parallel_entropy
from megatron_qwen.model.reward import end_token_values
from megatron_qwen.training.step import model_inputs, stage_batch


@dataclass
class Rollout:
    """This rank's responses of one iteration, [n, seq] each; the scores and per-token figures on the last
    pipeline stage (None elsewhere)."""

    tokens: torch.Tensor  # prompt + response, right-padded
    labels: torch.Tensor  # tokens shifted left by one
    mask: torch.Tensor  # 1 on the positions that predict a response token
    reward_tokens: torch.Tensor  # what the reward model scores
    end_index: torch.Tensor  # [n] the reward model's end token
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None  # [n] the reward model's

    def microbatches(self, size: int, **per_token) -> list[dict]:
        """Micro-batches of ``size`` rows in training/step.py's form, with ``per_token`` tensors [n, ...] beside
        (absent where None)."""
        rows = self.tokens.shape[0]
        positions = torch.arange(self.tokens.shape[1]).expand(size, -1)
        batches = []
        for start in range(0, rows, size):
            part = slice(start, start + size)
            batch = {"tokens": self.tokens[part], "position_ids": positions, "attention_mask": None,
                     "labels": self.labels[part], "loss_mask": self.mask[part]}
            batch.update({k: v[part] for k, v in per_token.items() if v is not None})
            batches.append(batch)
        return batches


def sample_responses(policy, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], vocab_size: int,
                     sampling: Sampling | None) -> list[list[int]]:
    """Each prompt's response, the stop id kept where one ended it (greedy where ``sampling`` is None). Every
    rank of the policy's model-parallel group calls this with the same prompts and gets the same ids."""
    chunk = unwrap(policy)
    was_training = chunk.training
    chunk.eval()
    try:
        responses = generate(chunk, prompts, max_new_tokens, stop_ids, sampling, vocab_size=vocab_size,
                             keep_stop=True)
    finally:
        chunk.train(was_training)
    return responses


def build_rollout(prompts: list[list[int]], responses: list[list[int]], seq_length: int, end_id: int,
                  stop_ids: set[int], pad_id: int = 0) -> Rollout:
    n = len(prompts)
    tokens = torch.full((n, seq_length), pad_id, dtype=torch.long)
    reward_tokens = torch.full((n, seq_length), pad_id, dtype=torch.long)
    mask = torch.zeros(n, seq_length)
    end_index = torch.zeros(n, dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        sequence = prompt + response
        tokens[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, len(prompt) - 1:len(sequence) - 1] = 1
        scored = prompt + (response[:-1] if response and response[-1] in stop_ids else response) + [end_id]
        reward_tokens[row, :len(scored)] = torch.tensor(scored)
        end_index[row] = len(scored) - 1
    labels = torch.cat([tokens[:, 1:], torch.full((n, 1), pad_id, dtype=torch.long)], dim=1)
    return Rollout(tokens, labels, mask, reward_tokens, end_index)


def _forward_only(chunks, batches: list[dict], read, seq_length: int, device) -> torch.Tensor | None:
    """``read(staged batch, output)`` of every micro-batch, concatenated, on the last pipeline stage (else None):
    the model's forward through megatron-core's schedule (any TP/PP layout), no loss, no gradient."""
    def step(data_iterator, model):
        chunk = unwrap(model)
        batch = stage_batch(next(data_iterator), chunk.pre_process, chunk.post_process, device,
                            ("labels", "loss_mask", "end_index"))
        inputs = model_inputs(batch, chunk)
        inputs["labels"] = None  # the logits (or values), not the model's own loss
        return model(**inputs), lambda output, non_loss_data=True: read(batch, output)

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(batches), model=chunks[0], num_microbatches=len(batches),
            seq_length=seq_length, micro_batch_size=batches[0]["tokens"].shape[0], forward_only=True,
            collect_non_loss_data=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.cat([o.cpu() for o in outputs])


def _logprobs_and_entropy(batch: dict, logits: torch.Tensor) -> torch.Tensor:
    """[mb, 2, seq]: each position's log-probability of its label and the entropy of its distribution."""
    group = parallel_state.get_tensor_model_parallel_group()
    logprobs = -vocab_parallel_cross_entropy(logits, batch["labels"], group)
    return torch.stack([logprobs, vocab_parallel_entropy(logits, group)], dim=1)


def score(rollout: Rollout, policy, reference, value, reward, micro_batch_size: int, seq_length: int,
          device) -> None:
    """Fill ``rollout``'s log-probabilities, entropy, values and scores (on the last pipeline stage)."""
    batches = rollout.microbatches(micro_batch_size)
    policy_out = _forward_only(policy, batches, _logprobs_and_entropy, seq_length, device)
    reference_out = _forward_only(reference, batches, lambda b, logits: -vocab_parallel_cross_entropy(
        logits, b["labels"], parallel_state.get_tensor_model_parallel_group()), seq_length, device)
    values = _forward_only(value, batches, lambda b, v: v.float(), seq_length, device)
    reward_batches = [{**b, "tokens": t, "end_index": e} for b, t, e in zip(
        batches, rollout.reward_tokens.split(micro_batch_size), rollout.end_index.split(micro_batch_size))]
    scores = _forward_only(reward, reward_batches, lambda b, v: end_token_values(v, b["end_index"]), seq_length,
                           device)
    if policy_out is not None:
        rollout.logprobs, rollout.entropy = policy_out[:, 0], policy_out[:, 1]
        rollout.ref_logprobs, rollout.values, rollout.scores = reference_out, values, scores
