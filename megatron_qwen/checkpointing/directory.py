"""Checkpoint directory layout (Megatron-LM's), readable without loading megatron-core.

    ROOT/iter_0000100/                     one checkpoint
    ROOT/iter_0000100/manifest.json        the size of each of its files, written last (integrity)
    ROOT/iter_0000100/hf_import.json       in a weights-only checkpoint converted from elsewhere
    ROOT/iter_0000100/deepspeed.json       in a DeepSpeed-engine checkpoint, beside DeepSpeed's own files
    ROOT/iter_0000200.partial/             one being written (renamed to iter_* once whole)
    ROOT/latest_checkpointed_iteration.txt the last *complete* checkpoint

Every write is staged and renamed into place once whole, and the tracker is replaced atomically
after it: a crash mid-save leaves the previous checkpoint as the latest.
"""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

import torch.distributed as dist

from megatron_qwen.config.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "manifest.json"
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
    with open(os.path.join(ckpt_dir, DEEPSPEED_MARKER)) as f:
        return json.load(f)


def is_deepspeed_checkpoint(root: str) -> bool:
    """True when the latest checkpoint under the --save directory ``root`` was written by the deepspeed engine."""
    iteration = latest_iteration(root) if os.path.isdir(root) else None
    return iteration is not None and written_by_deepspeed(iteration_dir(root, iteration))


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


def room_to_save(root: str, iteration: int) -> bool:
    """Rank 0 checks the free disk space for every rank (a collective); a refused save is one line."""
    problem = [too_little_disk(root) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] and dist.get_rank() == 0:
        print(f" not saving iteration {iteration}: {problem[0]}", flush=True)
    return problem[0] is None


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


def publish(root: str, iteration: int, staging: str, keep_last: int | None = None) -> None:
    """Rename a whole checkpoint into place, then point the tracker at it (rank 0, once every rank has written)."""
    ckpt_dir = iteration_dir(root, iteration)
    write_manifest(staging)  # sizes, checked at --load: a file truncated or deleted later is caught
    if os.path.isdir(ckpt_dir):  # the same iteration saved before: replace it
        shutil.rmtree(ckpt_dir + ".old", ignore_errors=True)
        os.rename(ckpt_dir, ckpt_dir + ".old")
    os.rename(staging, ckpt_dir)
    shutil.rmtree(ckpt_dir + ".old", ignore_errors=True)
    write_tracker(root, iteration)
    print(f" saved checkpoint at iteration {iteration} to {ckpt_dir}", flush=True)
    if keep_last:
        for old in prune(root, keep_last):
            print(f" deleted checkpoint {iteration_dir(root, old)} (--keep-last-checkpoints {keep_last})", flush=True)


@contextmanager
def staged_directory(destination: str, flag: str = "--save-dir"):
    """A fresh directory next to ``destination``, renamed to it when the block completes; removed
    if the block fails, so ``destination`` only ever appears whole (conversions and exports)."""
    if os.path.exists(destination):
        raise ConfigError(f"{flag} {destination} already exists; pass a new directory (nothing is overwritten)")
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(destination)) + ".partial-", dir=parent)
    try:
        yield staging
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
