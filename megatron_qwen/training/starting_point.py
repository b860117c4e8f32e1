"""Where a run starts, for either engine: what --load means (a resume, weights only, or nothing), which
iteration it names, and how weights only are read from each kind of source."""

import dataclasses
import functools

import torch.distributed as dist

from megatron_qwen.checkpointing.directory import is_deepspeed_checkpoint, iteration_dir, latest_iteration
from megatron_qwen.checkpointing.integrity import loadable_iteration, shared_damage
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.config.settings import CheckpointSettings
from megatron_qwen.hf.source import holds_weights_only, is_hf_dir


def effective_load(s: CheckpointSettings) -> CheckpointSettings:
    """What --load means for this run, whichever engine reads it."""
    # Hugging Face weights (a model directory, or a checkpoint converted from one) start a run as
    # --finetune does: weights only, fresh optimizer and iteration.
    if s.load and holds_weights_only(s.load):
        s = dataclasses.replace(s, finetune=True)
    if s.finetune and s.save and latest_iteration(s.save) is not None:
        # A fine-tuning run that already saved: resume it, rather than restart from the base model.
        s = dataclasses.replace(s, load=s.save, finetune=False)
    return s


def resume_iteration(s: CheckpointSettings) -> int | None:
    """The iteration to load from ``s.load``: the tracker's, or with --load-fallback the newest whole one
    before a damaged one (said on rank 0); None when there is nothing to load. Whole: every file of the
    size and (unless --no-verify-checksums) the checksum it was saved with, read once among the ranks."""
    check = functools.partial(shared_damage, verify=not s.no_verify_checksums)
    iteration, fallback_reason = loadable_iteration(s.load, s.load_fallback, check) if s.load else (None, None)
    if fallback_reason and dist.get_rank() == 0:
        print(f" --load-fallback: {fallback_reason}; loading iteration {iteration} instead", flush=True)
    return iteration


def load_weights_only(s: CheckpointSettings, chunks) -> str:
    """Fill this rank's model chunks (bare: before DeepSpeed partitions them) with the weights of --load
    (``s``, effective_load's) for a run that starts from them at iteration 0: a Hugging Face model (each
    rank reads its own slices), a DeepSpeed-engine checkpoint (PP=1) or a checkpoint of ours, at any
    layout. Returns what was read, for the log."""
    if is_hf_dir(s.load):
        from megatron_qwen.hf.load import load_hf_weights

        load_hf_weights(s.load, chunks, progress=dist.get_rank() == 0)
        return f"Hugging Face model {s.load}"
    if is_deepspeed_checkpoint(s.load):
        from megatron_qwen.checkpointing.deepspeed_format import load_deepspeed_weights

        (module,) = chunks
        ckpt_dir = iteration_dir(s.load, resume_iteration(s))
        load_deepspeed_weights(ckpt_dir, module)
        return f"DeepSpeed checkpoint {ckpt_dir}"
    ckpt_dir = iteration_dir(s.load, resume_iteration(s))
    load_weights(ckpt_dir, chunks)
    return ckpt_dir
