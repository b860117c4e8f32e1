"""Where a run starts, for either engine: what --load means (a resume, weights only, or nothing), which
iteration it names, and how weights only are read from each kind of source."""

import dataclasses

import torch.distributed as dist

from megatron_qwen.checkpointing.deepspeed_format import load_deepspeed_weights
from megatron_qwen.checkpointing.directory import (
    is_deepspeed_checkpoint,
    iteration_dir,
    latest_iteration,
    loadable_iteration,
)
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.config.settings import CheckpointSettings
from megatron_qwen.hf.load import load_hf_weights
from megatron_qwen.hf.source import holds_weights_only, is_hf_dir


def effective_load(checkpoint: CheckpointSettings) -> CheckpointSettings:
    """What --load means for this run, whichever engine reads it."""
    # Hugging Face weights (a model directory, or a checkpoint converted from one) start a run as
    # --finetune does: weights only, fresh optimizer and iteration.
    if checkpoint.load and holds_weights_only(checkpoint.load):
        checkpoint = dataclasses.replace(checkpoint, finetune=True)
    if checkpoint.finetune and checkpoint.save and latest_iteration(checkpoint.save) is not None:
        # A fine-tuning run that already saved: resume it, rather than restart from the base model.
        checkpoint = dataclasses.replace(checkpoint, load=checkpoint.save, finetune=False)
    return checkpoint


def resume_iteration(checkpoint: CheckpointSettings) -> int | None:
    """The iteration to load from ``checkpoint.load``: the tracker's, or with --load-fallback the newest whole one
    before a damaged one (said on rank 0); None when there is nothing to load."""
    if not checkpoint.load:
        return None
    iteration, fallback_reason = loadable_iteration(checkpoint.load, checkpoint.load_fallback)
    if fallback_reason and dist.get_rank() == 0:
        print(f" --load-fallback: {fallback_reason}; loading iteration {iteration} instead", flush=True)
    return iteration


def load_weights_only(checkpoint: CheckpointSettings, chunks) -> str:
    """Fill this rank's model chunks (bare: before DeepSpeed partitions them) with the weights of --load
    (``checkpoint``, effective_load's) for a run that starts from them at iteration 0: a Hugging Face model (each
    rank reads its own slices), a DeepSpeed-engine checkpoint (PP=1) or a checkpoint of ours, at any
    layout. Returns what was read, for the log."""
    if is_hf_dir(checkpoint.load):
        load_hf_weights(checkpoint.load, chunks, progress=dist.get_rank() == 0)
        return f"Hugging Face model {checkpoint.load}"
    if is_deepspeed_checkpoint(checkpoint.load):
        (module,) = chunks
        ckpt_dir = iteration_dir(checkpoint.load, latest_iteration(checkpoint.load))
        load_deepspeed_weights(ckpt_dir, module)
        return f"DeepSpeed checkpoint {ckpt_dir}"
    ckpt_dir = iteration_dir(checkpoint.load, resume_iteration(checkpoint))
    load_weights(ckpt_dir, chunks)
    return ckpt_dir
