"""Checkpoint directory layout (Megatron-LM's), readable without loading megatron-core. What a directory
holds (its kind) is decided in resolver.py; how a checkpoint is written into it, in saving.py.

    ROOT/iter_0000100/                     one checkpoint
    ROOT/iter_0000100/manifest.json        the size and checksum of each of its files, written last (integrity.py)
    ROOT/iter_0000100/hf_import.json       in a weights-only checkpoint converted from elsewhere (resolver.py)
    ROOT/iter_0000100/deepspeed.json       in a DeepSpeed-engine checkpoint, beside DeepSpeed's own files
    ROOT/iter_0000200.partial/             one being written (renamed to iter_* once whole)
    ROOT/latest_checkpointed_iteration.txt the last *complete* checkpoint
    ROOT/.writer.lock                      held by the one run writing to ROOT (writer_lock.py)

Every write is staged and renamed into place once whole, and the tracker is replaced atomically
after it: a crash mid-save leaves the previous checkpoint as the latest (saving.py).
"""

import os
import re

from megatron_qwen.config.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
_ITERATION_DIR = re.compile(r"iter_(\d{7})")


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


def complete_iterations(root: str) -> list[int]:
    """The iterations of the whole checkpoints under ``root`` (iter_* directories), oldest first."""
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(int(m.group(1)) for m in map(_ITERATION_DIR.fullmatch, names)
                  if m and os.path.isdir(os.path.join(root, m.group(0))))


def write_tracker(root: str, iteration: int) -> None:
    """Point the tracker at ``iteration``, atomically (a crash leaves the old pointer or the new one)."""
    tmp = os.path.join(root, TRACKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER))
