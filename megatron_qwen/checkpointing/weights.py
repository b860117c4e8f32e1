"""Model weights in megatron-core's distributed checkpoint format: the sharded state every checkpoint of
the megatron engine holds, loaded at any layout, and weights-only checkpoints written from one full (TP1)
model, which is what a conversion (from Hugging Face, from the DeepSpeed engine) produces.

A weights-only checkpoint carries resolver.IMPORT_MARKER, naming where its weights came from and its model
shape: a run that --loads it starts from the weights with a fresh optimizer and iteration, as with --finetune.
"""

import json
import os
from dataclasses import asdict

from megatron.core import dist_checkpointing

from megatron_qwen.checkpointing.directory import iteration_dir, write_tracker
from megatron_qwen.checkpointing.integrity import write_manifest
from megatron_qwen.checkpointing.megatron_lm import content_metadata, megatron_lm_records
from megatron_qwen.checkpointing.parallel_layout import layout
from megatron_qwen.checkpointing.resolver import IMPORT_MARKER
from megatron_qwen.checkpointing.saving import save_sharded, staged_directory
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.checkpointing.unpickling import check_pickles, restricted_unpickling
from megatron_qwen.config.run import RunConfig
from megatron_qwen.model.builder import unwrap

# Optimizer state stored per parameter in model space: loadable at any TP/PP/DP layout. Passed as a
# copy each time: megatron-core writes the data-parallel group into the dict it is given.
_SHARDED_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False,
                     "chained_optim_avoid_prefix": True}


def sharded_metadata() -> dict:
    return dict(_SHARDED_METADATA)


def model_keys(chunks) -> list[str]:
    return ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]


def model_state(chunks, prefix: str = "") -> dict:
    """The sharded state dict of this rank's model chunks, under global (layout-independent) keys, each after
    ``prefix`` (two models in one checkpoint: PPO's policy and value model)."""
    # A wrapper (DDP, Float16Module) has no sharded state of its own: ask the GPTModel it wraps.
    return {key: unwrap(chunk).sharded_state_dict(prefix=prefix, metadata=sharded_metadata())
            for key, chunk in zip(model_keys(chunks), chunks)}


def set_model_state(chunks, loaded: dict, prefix: str = "") -> None:
    for key, chunk in zip(model_keys(chunks), chunks):
        unwrap(chunk).load_state_dict({name.removeprefix(prefix): value for name, value in loaded[key].items()})


def load_weights(ckpt_dir: str, chunks) -> None:
    """Load the model weights of the checkpoint ``ckpt_dir`` (saved at any layout, by us or by Megatron-LM)
    into this rank's chunks; its pickles are checked first and read restricted (unpickling.py). The
    parameters a model has beyond a language model's (``new_parameters``: the reward head) keep their values
    where the checkpoint has none (a language model's)."""
    check_pickles(ckpt_dir)
    state = model_state(chunks)
    with restricted_unpickling():
        kept = _pop_absent_new_parameters(ckpt_dir, chunks, state)
        loaded = dist_checkpointing.load(state, ckpt_dir)
    for key, values in kept.items():
        loaded[key].update(values)
    set_model_state(chunks, loaded)


def _pop_absent_new_parameters(ckpt_dir: str, chunks, state: dict) -> dict[str, dict]:
    """Takes out of ``state`` the new parameters the checkpoint does not hold; their current values, by model
    key and name."""
    wanted = {key: unwrap(chunk).new_parameters for key, chunk in zip(model_keys(chunks), chunks)}
    if not any(wanted.values()):
        return {}
    stored = dist_checkpointing.load_tensors_metadata(ckpt_dir)
    kept = {}
    for (key, names), chunk in zip(wanted.items(), chunks):
        params = dict(unwrap(chunk).named_parameters())
        absent = [n for n in names if n in state[key] and state[key][n].key not in stored]
        kept[key] = {n: params[n].detach() for n in absent}
        for n in absent:
            del state[key][n]
    return kept


def save_weights_only(destination: str, iteration: int, chunk, cfg: RunConfig, source: str, source_kind: str) -> str:
    """Write the full (TP1, one process) model ``chunk`` as a new --save directory ``destination`` holding
    ``iteration``, marked as weights converted from ``source`` (of kind ``source_kind``: a Hugging Face
    layout, or deepspeed-zeroN). Staged: ``destination`` appears only whole. Returns the iteration directory."""
    with staged_directory(destination) as staging:
        ckpt_dir = iteration_dir(staging, iteration)
        os.makedirs(ckpt_dir)
        state, lay = model_state([chunk]), layout(tp=1, pp=1, dp=1)
        state.update(run_config=cfg.to_dict(), layout=lay, **megatron_lm_records(cfg, lay, TrainState(iteration), None))
        save_sharded(state, ckpt_dir, content_metadata(distributed_optimizer=False), asynchronous=False)
        with open(os.path.join(ckpt_dir, IMPORT_MARKER), "w") as f:
            json.dump({"source": os.path.abspath(source), "hf_layout": source_kind, "model": asdict(cfg.model)},
                      f, indent=2)
        write_manifest(ckpt_dir)
        write_tracker(staging, iteration)
    return iteration_dir(destination, iteration)

