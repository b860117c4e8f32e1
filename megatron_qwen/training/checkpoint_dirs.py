"""Checkpoint directory layout (Megatron-LM's), readable without loading megatron-core.

    ROOT/iter_0000100/                     one checkpoint
    ROOT/iter_0000100/manifest.json        the size of each of its files, written last (integrity)
    ROOT/iter_0000200.partial/             one being written (renamed to iter_* once whole)
    ROOT/latest_checkpointed_iteration.txt the last *complete* checkpoint
"""

import json
import os
import re
import shutil

from megatron_qwen.config.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "manifest.json"
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


def write_manifest(ckpt_dir: str) -> int:
    """Record the size of every file of a checkpoint just written; returns their total."""
    sizes = {}
    for folder, _, files in os.walk(ckpt_dir):
        for name in files:
            path = os.path.join(folder, name)
            if name != MANIFEST:
                sizes[os.path.relpath(path, ckpt_dir)] = os.path.getsize(path)
    tmp = os.path.join(ckpt_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(sizes, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(ckpt_dir, MANIFEST))
    return sum(sizes.values())


def checkpoint_bytes(ckpt_dir: str) -> int:
    """The total size its manifest records (0 for a checkpoint without one)."""
    path = os.path.join(ckpt_dir, MANIFEST)
    return sum(json.load(open(path)).values()) if os.path.isfile(path) else 0


def damage(ckpt_dir: str) -> str | None:
    """What is wrong with a checkpoint, naming the file: a file its manifest lists is missing or has
    another size (one stat per file; contents are not read). None if it is whole, or predates manifests."""
    if not os.path.isdir(ckpt_dir):
        return f"{ckpt_dir} is missing"
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    for name, size in json.load(open(path)).items():
        file = os.path.join(ckpt_dir, name)
        if not os.path.isfile(file):
            return f"{file} is missing (listed in {MANIFEST})"
        if os.path.getsize(file) != size:
            return f"{file} has {os.path.getsize(file)} bytes, {size} when it was saved (truncated or overwritten)"
    return None


def loadable_iteration(root: str, fallback: bool) -> tuple[int | None, str | None]:
    """(iteration to load, why not the tracker's) for --load ``root``: the tracker's checkpoint if it is
    whole; else ConfigError naming the damaged file, or with ``fallback`` the newest whole older one."""
    latest = latest_iteration(root)
    if latest is None:
        return None, None
    problem = damage(iteration_dir(root, latest))
    if problem is None:
        return latest, None
    if fallback:
        for older in reversed([it for it in complete_iterations(root) if it < latest]):
            if damage(iteration_dir(root, older)) is None:
                return older, f"{TRACKER} names iteration {latest} but {problem}"
    what = ("no older whole checkpoint to fall back to" if fallback else
            "pass --load-fallback to load the newest whole older checkpoint")
    raise ConfigError(f"--load {root}: {TRACKER} names iteration {latest} but {problem}; {what}")


def remove_leftovers(root: str) -> list[str]:
    """Delete what interrupted saves left (staging directories, replaced checkpoints, a tracker being
    written); returns their names. Only while no save is running: at start."""
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


def too_little_disk(root: str) -> str | None:
    """Why not to start a save under ``root``: less free space than the last checkpoint took. None if enough."""
    latest = latest_iteration(root) if os.path.isdir(root) else None
    need = checkpoint_bytes(iteration_dir(root, latest)) if latest is not None else 0
    free = shutil.disk_usage(root).free if os.path.isdir(root) else need
    if free >= need:
        return None
    return (f"{free / 2**30:.2f} GiB free on the disk of --save {root}, less than the last checkpoint's "
            f"{need / 2**30:.2f} GiB; free space there or lower --keep-last-checkpoints")
