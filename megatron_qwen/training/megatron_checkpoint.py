"""The megatron engine's checkpoints, in megatron-core's distributed checkpoint format.

Every tensor is saved under its global (layout-independent) key, so a checkpoint written at one
TP/PP/DP layout loads at another, optimizer state included. Storage (staged writes, the tracker,
what is recorded beside the tensors) is checkpointing/'s.
"""

import dataclasses
import os
import shutil

import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

from megatron_qwen.checkpointing.data_state import check_data_state, data_state
from megatron_qwen.checkpointing.directory import (
    iteration_dir,
    publish,
    remove_leftovers,
    room_to_save,
    staging_dir,
)
from megatron_qwen.checkpointing.parallel_layout import current_layout, same_layout
from megatron_qwen.checkpointing.rng_state import rng_states, set_rng_states
from megatron_qwen.checkpointing.weights import model_state, set_model_state, sharded_metadata
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.optimizer import adam_kernel, set_adam_kernel
from megatron_qwen.training.starting_point import effective_load, load_weights_only, resume_iteration
from megatron_qwen.training.train_state import TrainState


class MegatronCheckpointer:
    """Saves and restores one run's model, optimizer, schedule and state under --save/--load,
    and owns the asynchronous saves still in flight."""

    def __init__(self, cfg: RunConfig, model, optimizer, scheduler):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self._async_queue = None
        if cfg.checkpoint.save and dist.get_rank() == 0:  # no save runs yet: what is staged is a killed save's
            for name in remove_leftovers(cfg.checkpoint.save):
                print(f" removed {os.path.join(cfg.checkpoint.save, name)}, left by an interrupted save", flush=True)

    def save(self, state: TrainState) -> None:
        # One asynchronous save in flight at most: a kill then loses at most two save intervals (docs/reliability.md).
        self.finish_pending(blocking=True)
        if not room_to_save(self.cfg.checkpoint.save, state.iteration):
            return
        self._sync_params()
        request = self._write(state)
        if request is not None:
            self._async_queue = self._async_queue or AsyncCallsQueue()
            self._async_queue.schedule_async_request(request)

    def _sync_params(self) -> None:
        """With --overlap-param-gather a step updates only each data-parallel rank's own shard of the weights;
        the others arrive during the next forward. Gather them now, so that the checkpoint holds the step's
        weights (Megatron-LM forces the same parameter sync before each save)."""
        if self.cfg.parallel.overlap_param_gather and self.cfg.zero.distributed_optimizer:
            for chunk in self.model:
                chunk.start_param_sync(force_sync=True)

    def finish_pending(self, blocking: bool) -> None:
        """Complete async saves (their tracker update runs only once all ranks have written)."""
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=blocking)

    def load(self) -> TrainState:
        """Restore from --load if it holds a checkpoint; returns the train state to continue from."""
        s = effective_load(self.cfg.checkpoint)
        if s.load and s.finetune:
            what = load_weights_only(s, self.model)
            self.optimizer.reload_model_params()  # fp32 main copies (bf16 runs) were taken from the initial weights
            if dist.get_rank() == 0:
                print(f" loaded weights only from {what} (now {current_layout()}); continuing at iteration 0",
                      flush=True)
            return TrainState()
        iteration = resume_iteration(s)
        if iteration is None:  # training/preflight.py has said why, and refused what is not a first start
            return TrainState()
        return self._resume(iteration_dir(s.load, iteration), load_optim=not s.no_load_optim,
                            load_rng=not s.no_load_rng)

    def _write(self, state: TrainState):
        """Write a checkpoint of ``state``; with --async-save, returns the request still to finish."""
        cfg, root = self.cfg, self.cfg.checkpoint.save
        iteration = state.iteration  # the caller's state moves on while an async save completes
        staging = staging_dir(root, iteration)
        if dist.get_rank() == 0:
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted save
            os.makedirs(staging)
        dist.barrier()
        sharded = model_state(self.model)
        sharded["optimizer"] = self.optimizer.sharded_state_dict(sharded, is_loading=False,
                                                                 metadata=sharded_metadata())
        sharded.update(scheduler=self.scheduler.state_dict(), rng_state=_sharded_rng_state(),
                       train_state=dataclasses.asdict(state), data_state=data_state(cfg), layout=current_layout(),
                       run_config=cfg.to_dict())

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

    def _resume(self, ckpt_dir: str, load_optim: bool, load_rng: bool) -> TrainState:
        """Continue the run saved in ``ckpt_dir`` (model shape checked in preflight), at any layout."""
        common = dist_checkpointing.load_common_state_dict(ckpt_dir)
        check_data_state(ckpt_dir, common["data_state"], self.cfg)
        sharded = model_state(self.model)
        if load_optim:
            sharded["optimizer"] = self.optimizer.sharded_state_dict(sharded, is_loading=True,
                                                                     metadata=sharded_metadata())
        if load_rng and same_layout(common["layout"], current_layout()):  # each rank's RNG belongs to its place
            sharded["rng_state"] = _sharded_rng_state()
        loaded = dist_checkpointing.load(sharded, ckpt_dir)
        set_model_state(self.model, loaded)
        if load_optim:
            self.optimizer.load_state_dict(loaded["optimizer"])
            set_adam_kernel(self.optimizer, self.cfg.train.optim)  # this run's kernel, not the saving run's
        else:  # bf16 runs keep fp32 main copies, taken from the initial weights
            self.optimizer.reload_model_params()
        self.scheduler.load_state_dict(common["scheduler"])
        if "rng_state" in loaded:
            set_rng_states(loaded["rng_state"])
        state = TrainState(**common["train_state"])
        if dist.get_rank() == 0:
            what = f"model and optimizer (AdamW kernel: {adam_kernel(self.optimizer)})" if load_optim else "model"
            print(f" loaded {what} from {ckpt_dir} (saved at layout {common['layout']}, now {current_layout()}); "
                  f"continuing at iteration {state.iteration}", flush=True)
        return state


def _sharded_rng_state() -> ShardedObject:
    """This rank's RNG states, as one object per (pp, tp, dp x cp) rank: data- and context-parallel ranks count
    together, in the size as in the rank."""
    lay = current_layout()
    rank = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_data_parallel_rank(with_context_parallel=True))
    dp_cp = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    return ShardedObject("rng_state", rng_states(), (lay["pp"], lay["tp"], dp_cp), rank, replica_id=0)
