"""The megatron engine's checkpoints, in megatron-core's distributed checkpoint format.

Every tensor is saved under its global (layout-independent) key, so a checkpoint written at one
TP/PP/DP layout loads at another, optimizer state included. Storage (staged writes, the tracker,
checksums, what is recorded beside the tensors for us and for Megatron-LM) is checkpointing/'s;
so is reading, which also takes Megatron-LM's checkpoints.
"""

import dataclasses
import functools

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_qwen.checkpointing.data_state import check_data_state, data_state
from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.megatron_lm import (
    content_metadata,
    megatron_lm_records,
    rng_from_megatron_lm,
    rng_to_megatron_lm,
)
from megatron_qwen.checkpointing.parallel_layout import current_layout, same_layout
from megatron_qwen.checkpointing.reading import common_state, megatron_lm_rng, sharding
from megatron_qwen.checkpointing.resolver import Start, starting_point
from megatron_qwen.checkpointing.rng_state import rng_states, set_rng_states
from megatron_qwen.checkpointing.saving import StagedSaves, save_sharded
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.checkpointing.unpickling import check_pickles, restricted_unpickling
from megatron_qwen.checkpointing.weights import model_state, set_model_state, sharded_metadata
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.optimizer import (
    adam_kernel,
    allocate_state_for_load,
    load_optimizer_state,
    set_adam_kernel,
)
from megatron_qwen.training.starting_point import load_weights_only, resume_iteration, say_weights_only_start


class MegatronCheckpointer:
    """Saves and restores one run's model, optimizer, schedule and state under --save/--load,
    and owns the asynchronous saves still in flight."""

    def __init__(self, cfg: RunConfig, model, optimizer, scheduler, start: Start | None = None):
        """``start``: where the run starts (default: resolved from ``cfg``'s checkpoint settings)."""
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.start = start or starting_point(cfg.checkpoint)
        self.saves = StagedSaves(cfg.checkpoint.save, cfg.checkpoint.keep_last_checkpoints) if cfg.checkpoint.save \
            else None

    def save(self, state: TrainState) -> None:
        self.saves.save(state.iteration, functools.partial(self._write, state))

    def _sync_params(self) -> None:
        """With --overlap-param-gather a step updates only each data-parallel rank's own shard of the weights;
        the others arrive during the next forward. Gather them now, so that the checkpoint holds the step's
        weights (Megatron-LM forces the same parameter sync before each save)."""
        if self.cfg.parallel.overlap_param_gather and self.cfg.zero.distributed_optimizer:
            for model in self.trained_models():
                for chunk in model:
                    chunk.start_param_sync(force_sync=True)

    def finish_pending(self, blocking: bool) -> None:
        if self.saves is not None:
            self.saves.finish_pending(blocking)

    def load(self) -> TrainState:
        """Restore from --load if it holds a checkpoint; returns the train state to continue from."""
        s = self.start.settings
        if s.load and s.finetune:
            what = load_weights_only(self.start, self.model)
            self.optimizer.reload_model_params()  # fp32 main copies (bf16 runs) were taken from the initial weights
            say_weights_only_start(what)
            return TrainState()
        return self.resume() or TrainState()

    def resume(self) -> TrainState | None:
        """Continue the run saved under --load (as starting_point reads it); None when there is no run to
        continue: no --load, a start from weights only, or no checkpoint (training/preflight.py has said why,
        and refused what is not a first start)."""
        s = self.start.settings
        iteration = None if s.finetune else resume_iteration(s)
        if iteration is None:
            return None
        return self._resume(iteration_dir(s.load, iteration), load_optim=not s.no_load_optim,
                            load_rng=not s.no_load_rng)

    def _write(self, state: TrainState, staging: str):
        """Write a checkpoint of ``state`` into ``staging``; with --async-save, returns the request still to run."""
        self._sync_params()
        cfg = self.cfg
        lay = current_layout()
        sharded = self.trained_state(is_loading=False, with_optimizer=True, metadata=sharded_metadata())
        sharded.update(self.trained_common_state(), rng_state=_rng_object(_place_rng_states()),
                       train_state=dataclasses.asdict(state), data_state=data_state(cfg), layout=lay,
                       run_config=cfg.to_dict(), **megatron_lm_records(cfg, lay, state, self.scheduler.state_dict()))
        return save_sharded(sharded, staging, content_metadata(cfg.zero.distributed_optimizer),
                            asynchronous=cfg.checkpoint.async_save)

    def _resume(self, ckpt_dir: str, load_optim: bool, load_rng: bool) -> TrainState:
        """Continue the run saved in ``ckpt_dir`` (ours or Megatron-LM's; model shape checked in preflight)."""
        check_pickles(ckpt_dir)
        with restricted_unpickling():
            common = common_state(ckpt_dir)
            check_data_state(ckpt_dir, common["data_state"], self.cfg)
            load_optim = load_optim and not common.get("no_save_optim")
            sharded, rng_layout = self._state_to_load(common, load_optim, load_rng)
            loaded = dist_checkpointing.load(sharded, ckpt_dir)
        what = self.restore_trained_state(loaded, common, with_optimizer=load_optim)
        if "rng_state" in loaded:
            saved = loaded["rng_state"]
            set_rng_states(_own_rng_states(saved, common["layout"]) if rng_layout else saved)
        state = TrainState(**common["train_state"])
        if dist.get_rank() == 0:
            print(f" loaded {what} from {ckpt_dir} (saved at layout {common['layout']}, now {current_layout()}); "
                  f"continuing at iteration {state.iteration}", flush=True)
        return state

    def _state_to_load(self, common: dict, load_optim: bool, load_rng: bool) -> tuple[dict, bool]:
        """(the sharded state to load from a checkpoint whose common state is ``common``, whether its RNG object
        has Megatron-LM's layout). The optimizer's is built as the checkpoint's content_metadata says it is
        sharded; the RNG states are taken when they belong to this rank's place: the same TP x PP (x DP x CP in
        checkpoints of ours written before Megatron-LM's layout)."""
        sharded = self.trained_state(is_loading=True, with_optimizer=load_optim, metadata=sharding(common))
        rng_layout, saved, now = megatron_lm_rng(common), common["layout"], current_layout()
        same_place = (saved["tp"], saved["pp"]) == (now["tp"], now["pp"]) if rng_layout else same_layout(saved, now)
        if load_rng and same_place and not common.get("no_save_rng"):
            sharded["rng_state"] = _sharded_rng_state(rng_layout)
        return sharded, rng_layout

    # What is trained, and how it is stored: one model, its optimizer and LR schedule here (the schedule in
    # Megatron-LM's records); PPO's two models (training/ppo_checkpoint.py) override these four.
    def trained_models(self) -> list:
        """The trained models (each a list of chunks): their weights are what a save must hold whole."""
        return [self.model]

    def trained_state(self, is_loading: bool, with_optimizer: bool, metadata: dict) -> dict:
        """The sharded state of the model and (``with_optimizer``) its optimizer, sharded as ``metadata`` says."""
        return model_and_optimizer_state(self.model, self.optimizer if with_optimizer else None, is_loading,
                                         metadata)

    def trained_common_state(self) -> dict:
        """What is stored beside the tensors, beyond the records every checkpoint has."""
        return {}

    def restore_trained_state(self, loaded: dict, common: dict, with_optimizer: bool) -> str:
        """Set the model, optimizer and schedule from a load; what was loaded, for the log."""
        return restore_model_and_optimizer(self.cfg, loaded, common["scheduler"], self.model, self.optimizer,
                                           self.scheduler, with_optimizer)


def model_and_optimizer_state(model, optimizer, is_loading: bool, metadata: dict, prefix: str = "") -> dict:
    """The sharded state of ``model`` (its keys after ``prefix``) and of ``optimizer`` (None: none), the
    optimizer's sharded as ``metadata`` says (for a load: as the checkpoint's was)."""
    sharded = model_state(model, prefix)
    if optimizer is not None:
        if is_loading:
            allocate_state_for_load(optimizer)
        sharded["optimizer"] = optimizer.sharded_state_dict(sharded, is_loading=is_loading, metadata=metadata)
    return sharded


def restore_model_and_optimizer(cfg: RunConfig, loaded: dict, scheduler_state: dict | None, model, optimizer,
                                scheduler, with_optimizer: bool, prefix: str = "") -> str:
    """Set ``model`` from ``loaded`` (model_and_optimizer_state's form), ``optimizer`` too or its fp32 main
    copies from the loaded weights, and ``scheduler`` from ``scheduler_state`` (None: a checkpoint without one);
    what was loaded, for the log."""
    set_model_state(model, loaded, prefix)
    if with_optimizer:
        load_optimizer_state(optimizer, loaded["optimizer"])
        set_adam_kernel(optimizer, cfg.train.optim)  # this run's kernel, not the saving run's
    else:  # bf16 runs keep fp32 main copies, taken from the initial weights
        optimizer.reload_model_params()
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    return f"model and optimizer (AdamW kernel: {adam_kernel(optimizer)})" if with_optimizer else "model"


def _rng_object(states: list[dict]) -> ShardedObject:
    """RNG states in Megatron-LM's layout (get_rng_state): one object per (pp, tp) place, the data- x
    context-parallel rank its replica id (the first one's is written), holding a list of RNG states under
    Megatron-LM's names. Saved, the list is the place's ranks' states in their order (_place_rng_states:
    Megatron-LM's list under --data-parallel-random-init); a load's template needs only this rank's."""
    lay = current_layout()
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    return ShardedObject("rng_state", rng_to_megatron_lm(states), (lay["pp"], lay["tp"]), (pp, tp),
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def _sharded_rng_state(megatron_lm_layout: bool) -> ShardedObject:
    """The RNG object to load: Megatron-LM's layout (_rng_object), or that of checkpoints of ours written
    before it, one object per (pp, tp, dp x cp) rank, declared over data- and context-parallel ranks together."""
    if megatron_lm_layout:
        return _rng_object([rng_states()])
    lay = current_layout()
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    dp_cp = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    size = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    return ShardedObject("rng_state", rng_states(), (lay["pp"], lay["tp"], size), (pp, tp, dp_cp), replica_id=0)


def _own_rng_states(saved: list[dict], saved_layout: dict) -> dict:
    """This rank's RNG states from a Megatron-LM-layout object loaded at the same TP x PP: its own entry where
    the data- x context-parallel layout is the saved one; otherwise the first, as Megatron-LM takes without
    --data-parallel-random-init (the ranks of one place are seeded alike and draw alike)."""
    dp_cp = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    size = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    own = same_layout(saved_layout, current_layout()) and len(saved) == size
    return rng_from_megatron_lm(saved[dp_cp if own else 0], torch.cuda.is_available())


def _place_rng_states() -> list[dict]:
    """The RNG states of this (pp, tp) place's data- x context-parallel ranks, in their rank order, on the
    place's first rank (the replica that writes the object)."""
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    size = dist.get_world_size(group)
    if size == 1:
        return [rng_states()]
    gathered = [None] * size if dist.get_rank(group) == 0 else None
    dist.gather_object(rng_states(), gathered, dst=dist.get_global_rank(group, 0), group=group)
    return gathered or [rng_states()]  # what the other ranks' objects hold is not written
