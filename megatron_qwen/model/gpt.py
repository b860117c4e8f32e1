"""Qwen's GPT model on megatron-core: megatron-core's GPTModel with the loss of model/loss.py. model/builder.py
builds it (and its reward-model subclass, model/reward.py)."""

import torch
from megatron.core.models.gpt import GPTModel

from megatron_qwen.model.loss import vocab_parallel_cross_entropy


class QwenGPTModel(GPTModel):
    """megatron-core's GPT model, with the loss of model/loss.py where ``chunked_loss``: the loss is the one
    component megatron-core's specs do not reach. ``head`` names what its last stage ends in (the training
    objective follows it: training/step.py); ``new_parameters``: those a language model's checkpoint lacks.
    ``packed_form``: how its attention takes a packed sample's boundaries, "thd" or "mask" (model/packing.py;
    the training step reads it)."""

    head = "lm"
    new_parameters: tuple[str, ...] = ()

    def __init__(self, *args, chunked_loss: bool = True, compiled_loss: bool = False, packed_form: str = "mask",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.chunked_loss, self.compiled_loss, self.packed_form = chunked_loss, compiled_loss, packed_form

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.chunked_loss:
            return super().compute_language_model_loss(labels, logits)
        # logits [s, b, V/TP], labels [b, s]
        loss = vocab_parallel_cross_entropy(logits, labels.t(), self.pg_collection.tp, self.compiled_loss)
        return loss.t().contiguous()  # [b, s]
