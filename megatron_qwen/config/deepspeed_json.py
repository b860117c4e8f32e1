"""A user's DeepSpeed JSON (--deepspeed_config, as Megatron-DeepSpeed's scripts pass it): read and checked
(config/deepspeed_flags.py maps it onto our flags, config/zero.py lays our values over it for DeepSpeed)."""

import json

from megatron_qwen.config.errors import ConfigError

# Sections that change what is trained on or how, with nothing here to carry them out when enabled.
UNBUILT_WHEN_ENABLED = {
    "fp16": "fp16 with loss scaling is not built here: train in bf16 (--bf16, or \"bf16\": {\"enabled\": true})",
    "curriculum_learning": "sequence-length curriculum needs Megatron-DeepSpeed's data pipeline",
    "data_efficiency": "curriculum sampling and random-LTD need Megatron-DeepSpeed's data pipeline",
}


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError as e:
        raise ConfigError(f"--deepspeed_config {path}: {e.strerror}; pass a DeepSpeed JSON file") from None
    except ValueError as e:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON ({e})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object")
    for section, why in UNBUILT_WHEN_ENABLED.items():
        if isinstance(user.get(section), dict) and user[section].get("enabled") is True:
            raise ConfigError(f"--deepspeed_config {path} sets {section}.enabled = true: {why}; set it false "
                              "or remove the section")
    return user


def passed_to_deepspeed(user: dict) -> dict:
    """What DeepSpeed itself gets of the JSON: all but the sections mapped onto our optimizer and schedule."""
    return {k: v for k, v in user.items() if k not in ("optimizer", "scheduler")}


def none_if_auto(value):
    """``value``, or None where it is "auto": Hugging Face-style configs write "auto" for "fill in for me", which
    leaves the value to our flags and defaults."""
    return None if value == "auto" else value
