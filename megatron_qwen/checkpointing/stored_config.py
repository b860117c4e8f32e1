"""The run configuration a checkpoint of either engine stores, and the check made on it at --load: the
model shape must be the one this run builds. Preflight reads it before any process group."""

import os

from megatron_qwen.checkpointing.directory import DEEPSPEED_MARKER, deepspeed_record, written_by_deepspeed
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.run import RunConfig


def saved_run_config(ckpt_dir: str) -> tuple[dict, str]:
    """(run configuration as stored, the file it is in) of a checkpoint of either engine: DeepSpeed's
    files hold none, so that engine stores ours beside them."""
    if written_by_deepspeed(ckpt_dir):
        return deepspeed_record(ckpt_dir)["run_config"], os.path.join(ckpt_dir, DEEPSPEED_MARKER)
    # megatron-core takes seconds to import: only a megatron-engine checkpoint needs it, and preflight runs first
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(ckpt_dir)["run_config"], os.path.join(ckpt_dir, "common.pt")


def check_same_model(ckpt_dir: str, cfg: RunConfig) -> None:
    """Refuse a checkpoint of another model shape than this run builds: one line naming each field, the
    flag that sets it, and both values. Run in preflight, before any process group."""
    saved, source = saved_run_config(ckpt_dir)
    saved_model, model_now = saved["model"], cfg.to_dict()["model"]
    diff = [f"{k.replace('_', ' ')} {saved_model.get(k)} saved, {v} asked (--{k.replace('_', '-')})"
            for k, v in model_now.items() if saved_model.get(k) != v]
    if diff:
        raise ConfigError(f"--load {ckpt_dir} holds another model shape: {'; '.join(diff)}; pass the saved "
                          f"run's --model-size and shape flags (its config: {source})")
