"""Checkpoints with megatron-core's distributed checkpointing (directory layout: checkpoint_dirs.py).

Every tensor is saved under its global (layout-independent) key, so a checkpoint written at
one TP/PP/DP layout loads at another. The tracker file is replaced atomically only after every
rank has finished writing: a crash mid-save leaves the previous checkpoint as the latest.
"""

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_qwen.config.arguments import CheckpointSettings, RunConfig
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.model.builder import unwrap
from megatron_qwen.training.checkpoint_dirs import (
    TRACKER,
    iteration_dir,
    latest_iteration,
    loadable_iteration,
    prune,
    remove_leftovers,
    too_little_disk,
    write_manifest,
)
from megatron_qwen.training.deepspeed_checkpoint import MARKER as DEEPSPEED_MARKER
from megatron_qwen.training.deepspeed_checkpoint import written_by_deepspeed
from megatron_qwen.training.optimizer import adam_kernel, set_adam_kernel

# Optimizer state stored per parameter in model space: loadable at any TP/PP/DP layout. Passed as a
# copy each time: megatron-core writes the data-parallel group into the dict it is given.
_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False,
             "chained_optim_avoid_prefix": True}


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores besides the model, optimizer and schedule."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0

    def advance(self, global_batch_size: int, update_successful: bool) -> None:
        self.iteration += 1
        self.consumed_samples += global_batch_size
        self.skipped_iterations += 0 if update_successful else 1


class Checkpointer:
    """Saves and restores one run's model, optimizer, schedule and state under --save/--load,
    and owns the asynchronous saves still in flight."""

    def __init__(self, cfg: RunConfig, model, optimizer, scheduler):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self._async_queue = None
        if cfg.checkpoint.save and dist.get_rank() == 0:  # no save runs yet: what is staged is a killed save's
            for name in remove_leftovers(cfg.checkpoint.save):
                print(f" removed {os.path.join(cfg.checkpoint.save, name)}, left by an interrupted save", flush=True)

    def due(self, iteration: int) -> bool:
        s = self.cfg.checkpoint
        if not s.save:
            return False
        if iteration == self.cfg.train.train_iters:
            return True
        if s.exit_interval and iteration % s.exit_interval == 0:
            return True
        return bool(s.save_interval) and iteration % s.save_interval == 0

    def save(self, state: TrainState) -> None:
        # One asynchronous save in flight at most: a kill then loses at most two save intervals (docs/reliability.md).
        self.finish_pending(blocking=True)
        if not _room_to_save(self.cfg.checkpoint.save, state.iteration):
            return
        request = _write(self.cfg, state, self.model, self.optimizer, self.scheduler)
        if request is not None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._async_queue = self._async_queue or AsyncCallsQueue()
            self._async_queue.schedule_async_request(request)

    def finish_pending(self, blocking: bool) -> None:
        """Complete async saves (their tracker update runs only once all ranks have written)."""
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=blocking)

    def load(self) -> TrainState:
        return _restore(self.cfg, self.model, self.optimizer, self.scheduler)


def check_same_model(ckpt_dir: str, cfg: RunConfig) -> None:
    """Refuse a checkpoint (either engine's) of another model shape than this run builds: one line
    naming each field, the flag that sets it, and both values. Run in preflight, before any process group."""
    if written_by_deepspeed(ckpt_dir):  # DeepSpeed's files hold no run config: ours is stored beside them
        source = os.path.join(ckpt_dir, DEEPSPEED_MARKER)
        with open(source) as f:
            saved_model = json.load(f)["run_config"]["model"]
    else:
        source = os.path.join(ckpt_dir, "common.pt")
        saved_model = dist_checkpointing.load_common_state_dict(ckpt_dir)["run_config"]["model"]
    model_now = cfg.to_dict()["model"]
    diff = [f"{k.replace('_', ' ')} {saved_model.get(k)} saved, {v} asked (--{k.replace('_', '-')})"
            for k, v in model_now.items() if saved_model.get(k) != v]
    if diff:
        raise ConfigError(f"--load {ckpt_dir} holds another model shape: {'; '.join(diff)}; pass the saved "
                          f"run's --model-size and shape flags (its config: {source})")


def _room_to_save(root: str, iteration: int) -> bool:
    """Rank 0 checks the free disk space for every rank (a collective); a refused save is one line."""
    problem = [too_little_disk(root) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] and dist.get_rank() == 0:
        print(f" not saving iteration {iteration}: {problem[0]}", flush=True)
    return problem[0] is None


def _layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def rng_states() -> dict:
    return {
        "random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _rng_state() -> ShardedObject:
    """This rank's RNG states, as one object per (pp, tp, dp) rank."""
    state = rng_states()
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    dp = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    lay = _layout()
    return ShardedObject("rng_state", state, (lay["pp"], lay["tp"], lay["dp"]), (pp, tp, dp), replica_id=0)


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _model_keys(model) -> list[str]:
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def _model_state(chunks) -> dict:
    # A wrapper (DDP, Float16Module) has no sharded state of its own: ask the GPTModel it wraps.
    return {key: unwrap(chunk).sharded_state_dict(metadata=dict(_METADATA))
            for key, chunk in zip(_model_keys(chunks), chunks)}


def load_weights(ckpt_dir: str, chunks) -> None:
    """Load the model weights of the checkpoint ``ckpt_dir`` (saved at any layout) into this
    rank's chunks."""
    loaded = dist_checkpointing.load(_model_state(chunks), ckpt_dir)
    for key, chunk in zip(_model_keys(chunks), chunks):
        unwrap(chunk).load_state_dict(loaded[key])


def _data_state(cfg: RunConfig) -> dict:
    """What must not change silently between a checkpoint and its resume."""
    return {"global_batch_size": cfg.train.global_batch_size, "data_path": list(cfg.data.data_path),
            "seq_length": cfg.train.seq_length, "mock_data": cfg.data.mock_data}


def _write(cfg: RunConfig, state: TrainState, model, optimizer, scheduler):
    """Write a checkpoint of ``state``; with --async-save, returns the request still to finish."""
    root = cfg.checkpoint.save
    iteration = state.iteration  # the caller's state moves on while an async save completes
    # Written under a staging name and renamed once whole: iter_* directories are only ever complete.
    staging = staging_dir(root, iteration)
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted save
        os.makedirs(staging)
    dist.barrier()
    sharded = _model_state(model)
    sharded["optimizer"] = optimizer.sharded_state_dict(sharded, is_loading=False, metadata=dict(_METADATA))
    sharded["scheduler"] = scheduler.state_dict()
    sharded["rng_state"] = _rng_state()
    sharded["train_state"] = dataclasses.asdict(state)
    sharded["data_state"] = _data_state(cfg)
    sharded["layout"] = _layout()
    sharded["run_config"] = cfg.to_dict()

    def finalize():
        if dist.get_rank() == 0:
            publish(root, iteration, staging, cfg.checkpoint.keep_last_checkpoints)

    if cfg.checkpoint.async_save:
        request = dist_checkpointing.save(sharded, staging, async_sharded_save=True)
        request.add_finalize_fn(finalize)
        return request
    dist_checkpointing.save(sharded, staging)
    dist.barrier()
    finalize()
    dist.barrier()
    return None


def staging_dir(root: str, iteration: int) -> str:
    """Where a checkpoint is written before publish() renames it: iter_* directories are only ever complete."""
    return iteration_dir(root, iteration) + ".partial"


def publish(root: str, iteration: int, staging: str, keep_last: int | None = None) -> None:
    """Rename a whole checkpoint into place, then point the tracker at it (rank 0, once every rank has written)."""
    ckpt_dir = iteration_dir(root, iteration)
    write_manifest(staging)  # sizes, checked at --load: a file truncated or deleted later is caught
    if os.path.isdir(ckpt_dir):  # the same iteration saved before: replace it
        shutil.rmtree(ckpt_dir + ".old", ignore_errors=True)
        os.rename(ckpt_dir, ckpt_dir + ".old")
    os.rename(staging, ckpt_dir)
    shutil.rmtree(ckpt_dir + ".old", ignore_errors=True)
    tmp = os.path.join(root, TRACKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER))
    print(f" saved checkpoint at iteration {iteration} to {ckpt_dir}", flush=True)
    if keep_last:
        for old in prune(root, keep_last):
            print(f" deleted checkpoint {iteration_dir(root, old)} (--keep-last-checkpoints {keep_last})", flush=True)


def effective_load(s: CheckpointSettings) -> CheckpointSettings:
    """What --load means for this run, whichever engine reads it."""
    # Hugging Face weights (a model directory, or a checkpoint converted from one) start a run as
    # --finetune does: weights only, fresh optimizer and iteration.
    from megatron_qwen.hf.source import holds_weights_only

    if s.load and holds_weights_only(s.load):
        s = dataclasses.replace(s, finetune=True)
    if s.finetune and s.save and latest_iteration(s.save) is not None:
        # A fine-tuning run that already saved: resume it, rather than restart from the base model.
        s = dataclasses.replace(s, load=s.save, finetune=False)
    return s


def resume_iteration(s: CheckpointSettings) -> int | None:
    """The iteration to load from ``s.load`` (either engine): the tracker's, or with --load-fallback the
    newest whole one before a damaged one (said on rank 0); None when there is nothing to load."""
    iteration, fallback_reason = loadable_iteration(s.load, s.load_fallback) if s.load else (None, None)
    if fallback_reason and dist.get_rank() == 0:
        print(f" --load-fallback: {fallback_reason}; loading iteration {iteration} instead", flush=True)
    return iteration


def _restore(cfg: RunConfig, model, optimizer, scheduler) -> TrainState:
    """Restore from --load if it holds a checkpoint; returns the train state to continue from."""
    s = effective_load(cfg.checkpoint)
    from megatron_qwen.hf.source import is_hf_dir

    if s.load and is_hf_dir(s.load):  # each rank reads its own slices of the Hugging Face tensors
        from megatron_qwen.hf.load import load_hf_weights

        load_hf_weights(s.load, model, progress=dist.get_rank() == 0)
        optimizer.reload_model_params()  # fp32 main copies (bf16 runs) were taken from the initial weights
        if dist.get_rank() == 0:
            print(f" loaded weights only from Hugging Face model {s.load} (now {_layout()}); "
                  "continuing at iteration 0", flush=True)
        return TrainState()
    iteration = resume_iteration(s)
    if iteration is None:  # training/preflight.py has said why, and refused what is not a first start
        return TrainState()
    ckpt_dir = iteration_dir(s.load, iteration)
    common = dist_checkpointing.load_common_state_dict(ckpt_dir)  # model shape: checked in preflight
    if not s.finetune and not s.override_data_state and common["data_state"] != _data_state(cfg):
        raise ConfigError(
            f"--load {ckpt_dir} was saved with data settings {common['data_state']} but this run has "
            f"{_data_state(cfg)}; resuming would not continue the same data stream. Pass "
            "--override-data-state to resume anyway, or --finetune to start a new run from its weights")

    sharded = _model_state(model)
    load_optim = not (s.finetune or s.no_load_optim)
    same_layout = common["layout"] == _layout()
    if load_optim:
        sharded["optimizer"] = optimizer.sharded_state_dict(sharded, is_loading=True, metadata=dict(_METADATA))
    if not s.finetune and not s.no_load_rng and same_layout:
        sharded["rng_state"] = _rng_state()
    loaded = dist_checkpointing.load(sharded, ckpt_dir)

    for key, chunk in zip(_model_keys(model), model):
        unwrap(chunk).load_state_dict(loaded[key])
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        set_adam_kernel(optimizer, cfg.train.optim)  # this run's kernel, not the saving run's
    else:  # bf16 runs keep fp32 main copies, taken from the initial weights
        optimizer.reload_model_params()
    if s.finetune:
        state = TrainState()
    else:
        scheduler.load_state_dict(common["scheduler"])
        state = TrainState(**common["train_state"])
        if "rng_state" in loaded:
            _set_rng_state(loaded["rng_state"])
    if dist.get_rank() == 0:
        what = ("weights only" if s.finetune else "model" if not load_optim
                else f"model and optimizer (AdamW kernel: {adam_kernel(optimizer)})")
        print(f" loaded {what} from {ckpt_dir} (saved at layout {common['layout']}, "
              f"now {_layout()}); continuing at iteration {state.iteration}", flush=True)
    return state
