"""Where a run starts, for either engine, once checkpointing/resolver.py has said what --load holds
(``Start``): which iteration a resume loads, and how weights only are read from each kind of source."""

import functools

import torch.distributed as dist

from megatron_qwen.checkpointing.deepspeed_format import load_deepspeed_weights
from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.integrity import loadable_iteration, shared_damage
from megatron_qwen.checkpointing.parallel_layout import current_layout
from megatron_qwen.checkpointing.resolver import HF_KINDS, Kind, Start
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.config.settings import CheckpointSettings
from megatron_qwen.hf.load import load_hf_weights


def resume_iteration(checkpoint: CheckpointSettings) -> int | None:
    """The iteration to load from ``checkpoint.load``: the tracker's, or with --load-fallback the newest whole one
    before a damaged one (said on rank 0); None when there is nothing to load. Whole: every file of the
    size and (unless --no-verify-checksums) the checksum it was saved with, read once among the ranks."""
    if not checkpoint.load:
        return None
    check = functools.partial(shared_damage, verify=not checkpoint.no_verify_checksums)
    iteration, fallback_reason = loadable_iteration(checkpoint.load, checkpoint.load_fallback, check)
    if fallback_reason and dist.get_rank() == 0:
        print(f" --load-fallback: {fallback_reason}; loading iteration {iteration} instead", flush=True)
    return iteration


def say_weights_only_start(what: str) -> None:
    """Rank 0's line for a run that starts at iteration 0 from the weights ``what`` (load_weights_only's)."""
    if dist.get_rank() == 0:
        print(f" loaded weights only from {what} (now {current_layout()}); continuing at iteration 0", flush=True)


def load_weights_only(start: Start, chunks) -> str:
    """Fill this rank's model chunks (under ZeRO-3, gathered whole by the caller) with the weights of --load
    for a run that starts from them at iteration 0: a Hugging Face model (each rank reads its own slices),
    a DeepSpeed-engine checkpoint (PP=1) or a checkpoint of ours, at any layout. Returns what was read,
    for the log."""
    checkpoint, kind = start.settings, start.source.kind
    if kind in HF_KINDS:
        load_hf_weights(start.source, chunks, progress=dist.get_rank() == 0)
        return f"Hugging Face model {checkpoint.load}"
    iteration = resume_iteration(checkpoint)
    ckpt_dir = iteration_dir(checkpoint.load, iteration)
    if kind is Kind.DEEPSPEED:
        (module,) = chunks
        load_deepspeed_weights(start.source.at(iteration), module)
        return f"DeepSpeed checkpoint {ckpt_dir}"
    load_weights(ckpt_dir, chunks)
    return ckpt_dir
