"""Checkpoint directory layout (Megatron-LM's), readable without loading megatron-core.

    ROOT/iter_0000100/                     one checkpoint
    ROOT/latest_checkpointed_iteration.txt the last *complete* checkpoint
"""

import os

from megatron_qwen.config.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_iteration(root: str) -> int | None:
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected an iteration number, found {text[:40]!r}; "
                          "fix or delete the file, or point --load at another directory")
    return int(text)
