"""The reward model: Qwen's GPT model with a scalar head in place of the output layer (report section 3.2.1,
docs/qwen.md section 11).

The head maps each position's final hidden state to one value: ``v = w . h`` with ``w`` of shape [1, hidden],
no bias (transformers' Qwen2ForSequenceClassification ``score`` with one label, which the export writes). The
reward of a sequence is the value at its end token (end_token_values): the <|im_end|> closing the response
(tokenizer/chatml.py's encode_reward_sequence). The head returns every position's value, so PPO's value model
reuses it as is. ``w`` starts fresh, drawn like every other weight from (--seed, its name ``reward_head.weight``)
as normal(0, --init-method-std 0.02) (model/init.py), whenever the checkpoint a run starts from has no head
(a language model: pretrained, SFT or Hugging Face); a reward model's checkpoint brings its own.

Parallelism: the head lives on the last pipeline stage, like the output layer it replaces. Its weight is
replicated over tensor-parallel ranks, which all see the same hidden states. Under sequence parallelism each
rank scores its share of the sequence and the values are gathered; the weight's gradient then covers that
share only, and the weight is marked ``sequence_parallel`` so that megatron-core (and the DeepSpeed engine)
sum it over the TP group, as for the norms.
"""

import torch
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule

from megatron_qwen.model.gpt import QwenGPTModel

HEAD_WEIGHT = "reward_head.weight"


class ScalarHead(torch.nn.Module):
    """hidden states [s, b, h] (s this rank's share under sequence parallelism) -> values [b, s], in fp32."""

    def __init__(self, hidden_size: int, params_dtype: torch.dtype, sequence_parallel: bool, tp_group=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, hidden_size, dtype=params_dtype))
        self.sequence_parallel, self.tp_group = sequence_parallel, tp_group
        if sequence_parallel:
            self.weight.sequence_parallel = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        values = torch.matmul(hidden_states.float(), self.weight.float().t()).squeeze(-1)  # [s, b]
        if self.sequence_parallel:
            # Every TP rank computes the same loss from the gathered values: the backward keeps each rank's own
            # positions instead of summing the ranks' (identical) gradients.
            values = gather_from_sequence_parallel_region(values, tensor_parallel_output_grad=False,
                                                          group=self.tp_group)
        return values.t()


def end_token_values(values: torch.Tensor, end_index: torch.Tensor) -> torch.Tensor:
    """Each sequence's value at its end token: ``values`` [b, s], ``end_index`` [b] -> [b] (fp32)."""
    return values.float().gather(1, end_index.view(-1, 1).long()).view(-1)


class QwenRewardModel(QwenGPTModel):
    """QwenGPTModel whose last stage ends in the ScalarHead; its forward returns values [b, s] there (hidden
    states on the other stages). Parameters a language model's checkpoint lacks: ``new_parameters``."""

    head = "reward"
    new_parameters = (HEAD_WEIGHT,)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.post_process:
            del self.output_layer  # built by GPTModel; the head takes its place
            self.reward_head = ScalarHead(self.config.hidden_size, self.config.params_dtype,
                                          self.config.sequence_parallel, self.pg_collection.tp)

    def _postprocess(self, hidden_states, *args, **kwargs):
        if not self.post_process:
            return hidden_states
        return self.reward_head(hidden_states)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """megatron-core's default for a module: GPTModel's own ties or pads the output layer, which this model
        does not have."""
        return MegatronModule.sharded_state_dict(self, prefix, sharded_offsets, metadata)
