"""Checkpoint directory layout (Megatron-LM's), readable without loading megatron-core.

    ROOT/iter_0000100/                     one checkpoint
    ROOT/iter_0000100/manifest.json        the size and checksum of each of its files, written last (integrity.py)
    ROOT/iter_0000100/hf_import.json       in a weights-only checkpoint converted from elsewhere
    ROOT/iter_0000100/deepspeed.json       in a DeepSpeed-engine checkpoint, beside DeepSpeed's own files
    ROOT/iter_0000200.partial/             one being written (renamed to iter_* once whole)
    ROOT/latest_checkpointed_iteration.txt the last *complete* checkpoint
    ROOT/.writer.lock                      held by the one run writing to ROOT (writer_lock.py)

Every write is staged and renamed into place once whole, and the tracker is replaced atomically
after it: a crash mid-save leaves the previous checkpoint as the latest (saving.py).
"""

import json
import os
import re
import shutil

from megatron_qwen.config.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
IMPORT_MARKER = "hf_import.json"  # source and model shape (checkpointing/weights.py); named before DeepSpeed sources
DEEPSPEED_MARKER = "deepspeed.json"  # ZeRO stage, layout, DeepSpeed and run configs (training/deepspeed_checkpoint.py)
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


def import_marker(load: str) -> dict | None:
    """IMPORT_MARKER's contents in the latest checkpoint under ``load``: a converted, weights-only one (else None)."""
    iteration = latest_iteration(load) if os.path.isdir(load) else None
    path = os.path.join(iteration_dir(load, iteration), IMPORT_MARKER) if iteration is not None else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); convert the source model again") from None


def written_by_deepspeed(ckpt_dir: str) -> bool:
    """True for an iteration directory (``ROOT/iter_NNNNNNN``) the deepspeed engine wrote."""
    return os.path.isfile(os.path.join(ckpt_dir, DEEPSPEED_MARKER))


def deepspeed_record(ckpt_dir: str) -> dict:
    """DEEPSPEED_MARKER's contents in a DeepSpeed-engine iteration directory: ZeRO stage, layout, configs."""
    path = os.path.join(ckpt_dir, DEEPSPEED_MARKER)
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); restore it, or use an earlier checkpoint of the run") from None


def is_deepspeed_checkpoint(root: str) -> bool:
    """True when the latest checkpoint under the --save directory ``root`` was written by the deepspeed engine."""
    iteration = latest_iteration(root) if os.path.isdir(root) else None
    return iteration is not None and written_by_deepspeed(iteration_dir(root, iteration))


def remove_leftovers(root: str) -> list[str]:
    """Delete what interrupted saves left (staging directories, replaced checkpoints, a tracker being
    written); returns their names. Only by the holder of ``root``'s writer lock (writer_lock.py), before its
    first save: then no other process is writing there, and what is staged is a dead writer's."""
    names = os.listdir(root) if os.path.isdir(root) else []
    leftovers = sorted(n for n in names if n.endswith((".partial", ".old", ".tmp")))
    for name in leftovers:
        path = os.path.join(root, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return leftovers


def prune(root: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` whole checkpoints (never the tracker's); returns their iterations."""
    latest = latest_iteration(root)
    doomed = [it for it in complete_iterations(root)[:-keep] if it != latest]
    for it in doomed:
        shutil.rmtree(iteration_dir(root, it))
    return doomed


def staging_dir(root: str, iteration: int) -> str:
    """Where a checkpoint is written before publish() renames it: iter_* directories are only ever complete."""
    return iteration_dir(root, iteration) + ".partial"


def write_tracker(root: str, iteration: int) -> None:
    """Point the tracker at ``iteration``, atomically (a crash leaves the old pointer or the new one)."""
    tmp = os.path.join(root, TRACKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER))
