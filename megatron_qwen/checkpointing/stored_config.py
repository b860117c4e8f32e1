"""The check made at --load on the run configuration a checkpoint of either engine stores (read by
resolver.Resolved.stored_config, the one reader): the model shape must be the one this run builds.
Preflight makes it before any process group."""

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.run import RunConfig


def check_same_model(ckpt_dir: str, stored: tuple[dict, str], cfg: RunConfig) -> None:
    """Refuse a checkpoint of another model shape than this run builds (``stored``: the run configuration it
    stores, and its file: resolver.Resolved.stored_config): one line naming each field, the flag that sets it,
    and both values."""
    saved, source = stored
    saved_model, model_now = saved["model"], cfg.to_dict()["model"]
    # A field the checkpoint does not record (newer than it; Qwen-1's trained length in Megatron-LM's) is not compared.
    diff = [f"{k.replace('_', ' ')} {saved_model[k]} saved, {v} asked (--{k.replace('_', '-')})"
            for k, v in model_now.items() if k in saved_model and saved_model[k] != v]
    if diff:
        raise ConfigError(f"--load {ckpt_dir} holds another model shape: {'; '.join(diff)}; pass the saved "
                          f"run's --model-size and shape flags (its config: {source})")
