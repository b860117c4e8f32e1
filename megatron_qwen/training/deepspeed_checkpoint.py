"""The deepspeed engine's checkpoints: DeepSpeed's own files under our directory layout (iter_NNNNNNN/,
the tracker file), with checkpointing's deepspeed.json beside them, saved through the staged-save protocol
both engines share (checkpointing/saving.py's StagedSaves). A resume at the same TP x DP layout and ZeRO
stage loads them as they are; at any other, through DeepSpeed's universal checkpoint
(checkpointing/deepspeed_format.py), optimizer state included. A weights-only start (--finetune, or a
Hugging Face source) reads the weights into the module DeepSpeed holds, as the megatron engine's checkpointer
does into its model, and DeepSpeed then copies them into its fp32 master partitions.
"""

import dataclasses
import functools
import json
import os

import torch.distributed as dist

from megatron_qwen.checkpointing.checksums import HashingSaves
from megatron_qwen.checkpointing.data_state import check_data_state, data_state
from megatron_qwen.checkpointing.deepspeed_format import UNIVERSAL, to_universal
from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.parallel_layout import current_layout, same_layout
from megatron_qwen.checkpointing.resolver import DEEPSPEED_MARKER, Start, Use
from megatron_qwen.checkpointing.rng_state import rng_states, set_rng_states
from megatron_qwen.checkpointing.saving import StagedSaves
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.checkpointing.unpickling import check_pickles, restricted_unpickling
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.starting_point import load_weights_only, resume_iteration, say_weights_only_start


class DeepSpeedCheckpointer:
    """Saves and restores a DeepSpeed engine (``engine``: what deepspeed.initialize returned for the client
    ``optimizer``), the LR schedule and the run state, through checkpointing's staged saves. ``ds_config`` is
    recorded with each checkpoint; ``start`` is where the run starts (checkpointing/resolver.py)."""

    def __init__(self, cfg: RunConfig, engine, optimizer, scheduler, ds_config: dict, start: Start):
        self.cfg, self.engine, self.optimizer, self.scheduler = cfg, engine, optimizer, scheduler
        self.ds_config, self.start = ds_config, start
        self.saves = StagedSaves(cfg.checkpoint.save, cfg.checkpoint.keep_last_checkpoints) if cfg.checkpoint.save \
            else None

    def save(self, state: TrainState) -> None:
        self.saves.save(state.iteration, functools.partial(self._write, state))

    def _write(self, state: TrainState, staging: str) -> None:
        """DeepSpeed's files of every rank into ``staging`` (each hashed as written), then deepspeed.json."""
        cfg = self.cfg
        client_state = {"train_state": dataclasses.asdict(state), "scheduler": self.scheduler.state_dict(),
                        "rng_state": rng_states(), "data_state": data_state(cfg)}
        if not isinstance(self.engine.checkpoint_engine, HashingSaves):
            self.engine.checkpoint_engine = HashingSaves(self.engine.checkpoint_engine)
        root, tag = os.path.split(staging)
        self.engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
        if dist.get_rank() == 0:
            with open(os.path.join(staging, DEEPSPEED_MARKER), "w") as f:
                json.dump({"zero_stage": cfg.zero.stage, "layout": current_layout(),
                           "universal_checkpoint_info": True, "deepspeed_config": self.ds_config,
                           "run_config": cfg.to_dict()}, f, indent=1)

    def finish_pending(self, blocking: bool) -> None:
        """Saves are synchronous (--async-save is refused for this engine: DeepSpeed 0.19.8's checkpoint engine
        writes in the training process)."""

    def load(self) -> TrainState:
        s, source = self.start.settings, self.start.source
        if s.load and s.finetune:
            say_weights_only_start(self._load_weights_only())
            return TrainState()
        iteration = resume_iteration(s)
        if iteration is None:
            return TrainState()
        ckpt_dir = iteration_dir(s.load, iteration)
        saved = source.at(iteration).check_for(Use.RESUME_DEEPSPEED).marker  # preflight checked the tracker's
        changed = not same_layout(saved["layout"], current_layout()) or saved["zero_stage"] != self.cfg.zero.stage
        check_pickles(ckpt_dir, deepspeed=True)
        with restricted_unpickling(deepspeed=True):
            client = self._load_universal(ckpt_dir) if changed else self.engine.load_checkpoint(
                s.load, tag=os.path.basename(ckpt_dir), load_optimizer_states=not s.no_load_optim,
                load_lr_scheduler_states=False)[1]
        check_data_state(ckpt_dir, client["data_state"], self.cfg)
        self.scheduler.load_state_dict(client["scheduler"])
        if not s.no_load_rng and not changed:  # each rank's saved RNG belongs to its place in the saved layout
            set_rng_states(client["rng_state"])
        state = TrainState(**client["train_state"])
        if dist.get_rank() == 0:
            how = (f" through a universal checkpoint (ZeRO-{saved['zero_stage']} at {saved['layout']} -> "
                   f"ZeRO-{self.cfg.zero.stage} at {current_layout()}; fresh RNG states)" if changed else "")
            print(f" loaded DeepSpeed ZeRO-{saved['zero_stage']} checkpoint {ckpt_dir}{how}; continuing at iteration "
                  f"{state.iteration}", flush=True)
        return state

    def _load_weights_only(self) -> str:
        """--load's weights into the module DeepSpeed holds; what was read, for the log. Under ZeRO-3 each
        parameter is gathered whole while it is written, every data-parallel rank writing the same values (the
        first one's are kept); then the fp32 master copies are taken from the module's weights."""
        # deferred: DeepSpeed is imported for this engine only
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        module = self.engine.module
        with GatheredParameters(list(module.parameters()), modifier_rank=0, enabled=self.cfg.zero.stage == 3):
            what = load_weights_only(self.start, [module])
        self.engine.optimizer.refresh_fp32_params()
        return what

    def _load_universal(self, ckpt_dir: str) -> dict:
        """Resume at another TP x DP layout or ZeRO stage: DeepSpeed's universal checkpoint of ``ckpt_dir``
        (converted by rank 0 on the first such resume), loaded with its universal loader, which re-slices the
        fp32 weights and Adam moments for this layout. Returns the client state (of a saved rank)."""
        failure = [None]  # rank 0's, told to every rank so that none waits for a conversion that failed
        if dist.get_rank() == 0:
            try:
                to_universal(ckpt_dir)
            except Exception as e:
                failure[0] = f"converting {ckpt_dir} to a universal checkpoint failed: {type(e).__name__}: {e}"
                dist.broadcast_object_list(failure, src=0)
                raise
        dist.broadcast_object_list(failure, src=0)
        if failure[0]:
            raise RuntimeError(failure[0])
        engine, groups = self.engine, self.optimizer.param_groups
        # ZeRO-3's universal load gives every parameter group the first one's hyperparameters (deepspeed 0.19.8,
        # stage3.py), the no-decay group its wd_mult too; the groups' own come from the flags and the schedule.
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        engine._config.load_universal_checkpoint = True  # read by load_checkpoint only; set at load, not start
        try:
            _, client = engine.load_checkpoint(ckpt_dir, tag=UNIVERSAL, load_lr_scheduler_states=False,
                                               load_optimizer_states=not self.start.settings.no_load_optim)
        finally:
            engine._config.load_universal_checkpoint = False
        for group, own in zip(groups, hyper):
            group.update(own)
        return client
