"""Whether a checkpoint is whole, from its manifest: written last at save time, it lists every file with
its size and checksum (checksums.py), and a load checks the files against it before reading them.

    {"checksum": "xxh3_128", "files": {"common.pt": {"bytes": 1234, "xxh3_128": "9f..."}, ...}}

Checkpoints written before checksums list sizes only ({"common.pt": 1234, ...}) and are checked by size;
older ones without a manifest load unchecked. A damaged checkpoint is one line naming the file, and
``--load-fallback`` takes the newest whole older one instead (``loadable_iteration``).
"""

import json
import os
import shutil
from collections.abc import Callable

import torch.distributed as dist

from megatron_qwen.checkpointing.checksums import ALGORITHM, DIGESTS, file_digest, recorded_digest
from megatron_qwen.checkpointing.directory import TRACKER, complete_iterations, iteration_dir, latest_iteration
from megatron_qwen.checkpointing.paths import outside
from megatron_qwen.config.errors import ConfigError

MANIFEST = "manifest.json"
# The tensor shards: megatron-core's and DeepSpeed's. Every other file of a checkpoint is a small record that
# readers open first (common.pt, .metadata, metadata.json, deepspeed.json, ...): checked in preflight too.
SHARD_SUFFIXES = (".distcp", "_states.pt")


def is_record(name: str) -> bool:
    return not name.endswith(SHARD_SUFFIXES)


def write_manifest(ckpt_dir: str) -> int:
    """List every file of a checkpoint just written with its size and checksum (the digest its writer
    recorded, else read once: the small files libraries write themselves); returns their total size."""
    files = {}
    for folder, dirs, names in os.walk(ckpt_dir):
        dirs[:] = [d for d in dirs if d != DIGESTS]
        for name in names:
            path = os.path.join(folder, name)
            if path != os.path.join(ckpt_dir, MANIFEST):
                files[os.path.relpath(path, ckpt_dir)] = {"bytes": os.path.getsize(path),
                                                          ALGORITHM: recorded_digest(path) or file_digest(path)}
    for folder, dirs, _ in list(os.walk(ckpt_dir)):
        if os.path.basename(folder) == DIGESTS:
            shutil.rmtree(folder)
    tmp = os.path.join(ckpt_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"checksum": ALGORITHM, "files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(ckpt_dir, MANIFEST))
    return sum(entry["bytes"] for entry in files.values())


def read_manifest(ckpt_dir: str) -> dict[str, tuple[int, str | None]] | None:
    """{file: (bytes, checksum or None)} of a checkpoint's manifest; None without one. ValueError naming the
    problem when the manifest is unreadable or names a file outside the checkpoint."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            raw = json.load(f)
        listed = raw["files"] if "files" in raw else {name: {"bytes": size} for name, size in raw.items()}
        entries = {name: (int(e["bytes"]), e.get(ALGORITHM)) for name, e in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    for name in entries:
        if outside(ckpt_dir, name):
            raise ValueError(f"{path} lists {outside(ckpt_dir, name)}, not a file of the checkpoint")
    return entries


def checkpoint_bytes(ckpt_dir: str) -> int:
    """The total size its manifest records (0 for a checkpoint without one, or an unreadable one)."""
    try:
        return sum(size for size, _ in (read_manifest(ckpt_dir) or {}).values())
    except ValueError:
        return 0


def damage(ckpt_dir: str, verify: Callable[[str], bool] = lambda name: False) -> str | None:
    """What is wrong with a checkpoint, naming the file: its manifest is unreadable or names a path outside
    it, a listed file is missing or has another size (one stat each), or one that ``verify`` picks has
    another checksum (read whole). None if it is whole, or predates manifests."""
    if not os.path.isdir(ckpt_dir):
        return f"{ckpt_dir} is missing"
    try:
        entries = read_manifest(ckpt_dir)
    except ValueError as e:
        return str(e)
    for name, (size, _) in (entries or {}).items():
        file = os.path.join(ckpt_dir, name)
        if not os.path.isfile(file):
            return f"{file} is missing (listed in {MANIFEST})"
        if os.path.getsize(file) != size:
            return f"{file} has {os.path.getsize(file)} bytes, {size} when it was saved (truncated or overwritten)"
    for name, (_, digest) in (entries or {}).items():
        if digest and verify(name) and file_digest(os.path.join(ckpt_dir, name)) != digest:
            return (f"{os.path.join(ckpt_dir, name)} does not match the {ALGORITHM} checksum it was saved with "
                    "(corrupted on disk or in a copy)")
    return None


def records_damage(ckpt_dir: str) -> str | None:
    """damage() with the checksums of the small records verified (what preflight can afford on every rank)."""
    return damage(ckpt_dir, verify=is_record)


def shared_damage(ckpt_dir: str, verify: bool) -> str | None:
    """damage() with every checksum verified (``verify``), the reading shared out among the ranks of the job
    (a collective): each reads 1/N of the shards. The first problem any rank found, on every rank."""
    try:
        names = sorted(read_manifest(ckpt_dir) or {})
    except ValueError as e:
        return str(e)
    mine = set(names[dist.get_rank()::dist.get_world_size()]) if verify else set()
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, damage(ckpt_dir, verify=lambda name: is_record(name) or name in mine))
    return next((problem for problem in found if problem), None)


def loadable_iteration(root: str, fallback: bool,
                       check: Callable[[str], str | None] = records_damage) -> tuple[int | None, str | None]:
    """(iteration to load, why not the tracker's) for --load ``root``: the tracker's checkpoint if ``check``
    finds it whole; else ConfigError naming the damaged file, or with ``fallback`` the newest whole older one."""
    latest = latest_iteration(root)
    if latest is None:
        return None, None
    problem = check(iteration_dir(root, latest))
    if problem is None:
        return latest, None
    if fallback:
        for older in reversed([it for it in complete_iterations(root) if it < latest]):
            if check(iteration_dir(root, older)) is None:
                return older, f"{TRACKER} names iteration {latest} but {problem}"
    what = ("no older whole checkpoint to fall back to" if fallback else
            "pass --load-fallback to load the newest whole older checkpoint")
    raise ConfigError(f"--load {root}: {TRACKER} names iteration {latest} but {problem}; {what}")


def checked_checkpoint(ckpt_dir: str, verify: bool = True) -> str:
    """``ckpt_dir`` once it is whole (every checksum verified unless ``verify`` is False); ConfigError in one
    line naming the damaged file otherwise: the readers of a single checkpoint (conversions, export, generation)."""
    problem = damage(ckpt_dir, verify=lambda name: verify)
    if problem:
        raise ConfigError(f"{problem}; the checkpoint cannot be read as it is: restore the file, or use an earlier "
                          "checkpoint of the run")
    return ckpt_dir
