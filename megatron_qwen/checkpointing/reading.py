"""The common state of a megatron-core checkpoint, whoever wrote it: this version of ours, an earlier one, or
Megatron-LM (whose records are turned into ours: megatron_lm.py), read once the checkpoint is checked (its
manifest: integrity.py; its pickles: unpickling.py; both reached through resolver.Resolved.checked).
"""

import os

from megatron_qwen.checkpointing.megatron_lm import content_metadata, records_from_megatron_lm, written_by_megatron_lm
from megatron_qwen.checkpointing.unpickling import torch_load
from megatron_qwen.config.errors import ConfigError

COMMON = "common.pt"  # megatron-core's file of everything that is not a sharded tensor or object
FULLY_RESHARDABLE = ("fully_reshardable", "fully_sharded_model_space")  # loadable at any TP x PP


def common_state(ckpt_dir: str) -> dict:
    """The common state dict of a megatron-core checkpoint with our records, whoever wrote it: ours carry
    them; one of Megatron-LM's gets them derived from its args; ours before Megatron-LM's records were added
    stored the LR schedule as ``scheduler`` (now Megatron-LM's ``opt_param_scheduler``)."""
    path = os.path.join(ckpt_dir, COMMON)
    if not os.path.isfile(path):
        raise ConfigError(f"{ckpt_dir} has no {COMMON}: not a megatron-core distributed checkpoint (torch_dist)")
    common = torch_load(path, path)
    if not isinstance(common, dict):
        raise ConfigError(f"{path}: not a checkpoint's common state (a {type(common).__name__})")
    if written_by_megatron_lm(common):
        common = {**common, **records_from_megatron_lm(common, path)}
    if "run_config" not in common:  # a weights-only checkpoint (a conversion's) has no train_state
        raise ConfigError(f"{path}: no run_config or args: neither a checkpoint of ours nor Megatron-LM's")
    return {**common, "scheduler": common.get("opt_param_scheduler", common.get("scheduler"))}


def sharding(common: dict) -> dict:
    """How the checkpoint's optimizer state is sharded (its content_metadata), to build the state to load
    with: Megatron-LM's default dp_reshardable, or fully_reshardable (ours, also before it was recorded)."""
    return dict(common.get("content_metadata") or content_metadata(distributed_optimizer=True))


def megatron_lm_rng(common: dict) -> bool:
    """Whether the RNG object has Megatron-LM's layout ((pp, tp) objects): ours since its records were added,
    and Megatron-LM's; ours before, one object per (pp, tp, dp) rank."""
    return "checkpoint_version" in common


def check_reshardable(ckpt_dir: str, common: dict, layout_now: dict, load_optim: bool) -> None:
    """Refuse, in one line, a resume with optimizer state at another TP or PP than a checkpoint whose
    distributed-optimizer state is dp_reshardable (Megatron-LM's default): megatron-core reshards it over
    data-parallel ranks only."""
    kind = sharding(common).get("distrib_optim_sharding_type")
    saved = common["layout"]
    if not load_optim or kind is None or kind in FULLY_RESHARDABLE:
        return
    if (saved["tp"], saved["pp"]) != (layout_now["tp"], layout_now["pp"]):
        raise ConfigError(f"--load {ckpt_dir} holds distributed-optimizer state saved {kind} at TP{saved['tp']} x "
                          f"PP{saved['pp']}, which loads only at that TP x PP (this run: TP{layout_now['tp']} x "
                          f"PP{layout_now['pp']}); resume at that layout, pass --no-load-optim, or save it from "
                          "Megatron-LM with --dist-ckpt-optim-fully-reshardable")
