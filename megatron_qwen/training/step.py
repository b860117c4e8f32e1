"""One optimizer step: micro-batches through megatron-core's pipeline schedule, then the update.

The loss is the mean over every unmasked token of the global batch (sum of token losses,
divided once by the global token count in megatron-core's grad finalization), so it is the
same number whatever the data-, pipeline- or tensor-parallel split of the batch. The model's head
picks the objective (OBJECTIVES): the reward model's loss is likewise the mean over the global
batch's pairs (training/reward_loss.py).
"""

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_batch_on_this_cp_rank

from megatron_qwen.model.builder import unwrap
from megatron_qwen.model.packing import attention_mask, packed_seq_params
from megatron_qwen.training.reward_loss import pairwise_ranking_loss

_BATCH_KEYS_FIRST_STAGE = ("tokens", "position_ids")


def stage_batch(batch: dict, first: bool, last: bool, device, last_stage_keys: tuple[str, ...]) -> dict:
    """Only the tensors this pipeline stage reads, on its device, and with context parallelism
    only this rank's two chunks of the sequence (megatron-core's load-balanced split). The last stage
    reads its objective's ``last_stage_keys``. Every stage reads a packed sample's boundaries
    (``cu_seqlens``): each stage's attention keeps its conversations apart. (Packed samples never meet
    context parallelism: training/preflight.py refuses it.)"""
    keys = (_BATCH_KEYS_FIRST_STAGE if first else ()) + (last_stage_keys if last else ())
    staged = {k: batch[k].to(device, non_blocking=True) if batch.get(k) is not None else None for k in keys}
    staged = get_batch_on_this_cp_rank(staged)
    boundaries = batch.get("cu_seqlens")
    staged["cu_seqlens"] = None if boundaries is None else boundaries.to(device, non_blocking=True)
    return staged


def _runs_as_one_row(batch: dict, chunk) -> bool:
    """Whether this micro-batch reaches attention in megatron-core's THD layout: packed, on a back end that
    takes it so (transformer-engine, flash-attn); its b samples then run as one row of b x s tokens."""
    return batch.get("cu_seqlens") is not None and chunk.packed_form == "thd"


def model_inputs(batch: dict, chunk) -> dict:
    """The keyword arguments of ``chunk``'s forward for a staged micro-batch (``stage_batch``): the tokens
    and, for a packed one, its boundaries in the form the chunk's attention takes (model/packing.py)."""
    boundaries = batch.get("cu_seqlens")
    tensors = {k: batch.get(k) for k in (*_BATCH_KEYS_FIRST_STAGE, "labels")}
    mask, packed = None, None
    if _runs_as_one_row(batch, chunk):
        tensors = {k: None if v is None else v.reshape(1, -1) for k, v in tensors.items()}
        packed = packed_seq_params(boundaries)
    elif boundaries is not None:
        mask = attention_mask(boundaries)
    return {"input_ids": tensors["tokens"], "position_ids": tensors["position_ids"], "attention_mask": mask,
            "labels": tensors["labels"], "packed_seq_params": packed}


def masked_token_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """(sum of masked token losses, token count, report) in megatron-core's per-token form."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.float().view(-1)
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}


@dataclass(frozen=True)
class Objective:
    """What a model head trains on: the micro-batch keys its loss reads on the last pipeline stage; the loss in
    megatron-core's form, (staged batch, output) -> (loss sum, count, {name: [loss sum, count, *figure sums]});
    what a micro-batch's loss sum counts (its loss is the sum over the global batch / the global count); the
    loss's name in the log and the figures its report carries after the count, each a sum per counted item."""

    last_stage_keys: tuple[str, ...]
    loss: Callable
    count: Callable[[dict], torch.Tensor]
    loss_name: str
    figures: tuple[str, ...] = ()


def _language_model_loss(batch: dict, output_tensor: torch.Tensor):
    return masked_token_loss(batch.get("loss_mask"), output_tensor)


OBJECTIVES = {
    "lm": Objective(("labels", "loss_mask"), _language_model_loss, lambda mb: mb["loss_mask"].sum(), "lm loss"),
    # the reward model (model/reward.py): pairs of sequences, the loss averaged over pairs
    "reward": Objective(("end_index",), pairwise_ranking_loss, lambda mb: torch.tensor(mb["end_index"].numel() // 2),
                        "reward loss", ("pair accuracy", "reward margin")),
}


def objective_of(model) -> Objective:
    """The objective of a model chunk (or its wrappers: DDP, Float16Module, DeepSpeed's engine)."""
    return OBJECTIVES[unwrap(model).head]


def forward_step(data_iterator: Iterator[dict], model, device, objective: Objective | None = None):
    """One micro-batch through ``model``, its loss ``objective``'s (default: its head's)."""
    chunk = unwrap(model)
    objective = objective or OBJECTIVES[chunk.head]
    batch = stage_batch(next(data_iterator), chunk.pre_process, chunk.post_process, device,
                        objective.last_stage_keys)
    output = model(**model_inputs(batch, chunk))
    return output, partial(objective.loss, batch)


def local_loss(losses_reduced: list[dict]) -> torch.Tensor | None:
    """[loss sum, count, *figure sums] of this rank's micro-batches, known on the last pipeline stage
    (else None)."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.stack([torch.cat(list(x.values())) for x in losses_reduced]).sum(0)


def reduce_report(local: torch.Tensor | None) -> list[float] | None:
    """[loss, *figures] over the global batch, each a sum over data-parallel ranks per counted item (tokens,
    pairs), known on the last pipeline stage (else None)."""
    if local is None:
        return None
    total = local.clone()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return (total[[0, *range(2, len(total))]] / total[1].clamp(min=1)).tolist()


def _loss_and_figures(local: torch.Tensor | None, model_chunks, figures: dict | None,
                      objective: Objective | None = None) -> float | None:
    """The loss of ``local``; ``figures`` (when given) gets the objective's other figures by name."""
    report = reduce_report(local)
    if report is None:
        return None
    if figures is not None:
        figures.update(zip((objective or objective_of(model_chunks[0])).figures, report[1:]))
    return report[0]


def run_microbatches(model_chunks, data_iterators, num_microbatches: int, seq_length: int,
                     micro_batch_size: int, device, forward_only: bool = False,
                     figures: dict | None = None) -> float | None:
    """Forward (and backward unless forward_only) over one global batch; returns the loss (``figures``: as
    train_step's)."""
    local = _forward_backward(model_chunks, data_iterators, num_microbatches, seq_length, micro_batch_size, device,
                              forward_only)
    return _loss_and_figures(local, model_chunks, figures)


def _forward_backward(model_chunks, data_iterators, num_microbatches: int, seq_length: int,
                      micro_batch_size: int, device, forward_only: bool, objective: Objective | None = None):
    """This rank's [loss sum, count, *figure sums] over one global batch (last pipeline stage, else None)."""
    # The shape of the activations pipeline stages exchange: a micro-batch that runs as one row changes it.
    first = next(data_iterators[0])
    data_iterators = [itertools.chain([first], data_iterators[0]), *data_iterators[1:]]
    if _runs_as_one_row(first, unwrap(model_chunks[0])):
        seq_length, micro_batch_size = seq_length * micro_batch_size, 1
    forward_backward = get_forward_backward_func()
    losses = forward_backward(
        forward_step_func=partial(forward_step, device=device, objective=objective),
        data_iterator=data_iterators if len(model_chunks) > 1 else data_iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return local_loss(losses)


def forward_backward(model_chunks, optimizer, data_iterators, num_microbatches: int, seq_length: int,
                     micro_batch_size: int, device, figures: dict | None = None,
                     objective: Objective | None = None) -> tuple[torch.Tensor | None, float | None]:
    """The gradients of one step's micro-batches, from zero: (this rank's [loss sum, count, *figure sums] on
    the last pipeline stage, the loss over the global batch there), None elsewhere. ``figures``, when given,
    receives the objective's figures besides the loss by name (the reward model's pair accuracy and mean
    margin; none for language modelling), on the last pipeline stage. ``objective``: the loss, where not the
    model head's (PPO's policy and value losses)."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    local = _forward_backward(model_chunks, data_iterators, num_microbatches, seq_length, micro_batch_size,
                              device, forward_only=False, objective=objective)
    return local, _loss_and_figures(local, model_chunks, figures, objective)


def apply_update(optimizer, scheduler, global_batch_size: int) -> tuple[float, bool]:
    """(gradient norm, whether the update was applied): skipped, nothing changed, on a non-finite norm."""
    update_successful, grad_norm = _step_unless_nonfinite(optimizer)
    if update_successful:
        scheduler.step(increment=global_batch_size)
    return grad_norm, update_successful


def train_step(model_chunks, optimizer, scheduler, data_iterators, num_microbatches: int,
               seq_length: int, micro_batch_size: int, global_batch_size: int, device,
               figures: dict | None = None):
    """One optimizer step. Returns (loss, grad_norm, update_successful): the update is skipped (nothing
    changes) on a non-finite gradient norm. ``figures``: as forward_backward's."""
    _, loss = forward_backward(model_chunks, optimizer, data_iterators, num_microbatches, seq_length,
                               micro_batch_size, device, figures)
    grad_norm, update_successful = apply_update(optimizer, scheduler, global_batch_size)
    return loss, grad_norm, update_successful


def _step_unless_nonfinite(optimizer) -> tuple[bool, float]:
    """optimizer.step(), but only for a finite gradient norm: without a loss scaler (fp32 and bf16)
    megatron-core applies NaN and inf gradients. The same calls its step makes, with the check between
    the norm and the update; the norm is the same on every rank."""
    found_inf = optimizer.prepare_grads()
    grad_norm = optimizer.get_grad_norm()
    if found_inf or not math.isfinite(grad_norm):
        return False, grad_norm
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = opt.get_parameters()
        if opt.config.clip_grad > 0.0 and params:
            clip_grad_by_total_norm_fp32(params, opt.config.clip_grad, grad_norm,
                                         opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return optimizer.step_with_ready_grads(), grad_norm
