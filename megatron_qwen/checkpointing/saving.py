"""Writing checkpoints so that nothing already saved is put at risk: every write is staged and published
whole (its manifest with the checksums last), a save is not started without room for it, a disk that fills
during one is one line naming ENOSPC, and a conversion's output appears only whole, with the user's file mode.

``StagedSaves`` is the protocol both training engines save through (docs/reliability.md): what interrupted
saves left is removed at start, each save is staged in ``iter_N.partial`` (a stale one cleared first), written
by the engine (its files hashed as written), published by rank 0 once every rank has written (manifest,
rename to ``iter_N``, tracker, pruning), with one asynchronous save in flight at most where the engine writes
asynchronously (the megatron engine's --async-save).
"""

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager

import torch.distributed as dist

from megatron_qwen.checkpointing.checksums import checksummed_writes
from megatron_qwen.checkpointing.directory import complete_iterations, iteration_dir, latest_iteration, write_tracker
from megatron_qwen.checkpointing.integrity import checkpoint_bytes, write_manifest
from megatron_qwen.checkpointing.writer_lock import LOCK, lock_directory, release, writer_is_dead
from megatron_qwen.config.errors import ConfigError


class DiskFullError(ConfigError):
    """The disk filled during a save (ENOSPC): the save is abandoned, the previous checkpoint stays."""


def disk_full(error: BaseException, root: str) -> bool:
    """Whether a save under ``root`` that failed with ``error`` ran out of space: ENOSPC in the error or one it
    was raised from (megatron-core wraps its writers' errors), or, where a writer lost the error number
    (torch's zip writer reports a short write as a position mismatch), under 1 MiB left on the disk."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "[Errno 28]" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return os.path.isdir(root) and shutil.disk_usage(root).free < 2**20


def disk_full_error(root: str, what: str) -> DiskFullError:
    latest = latest_iteration(root) if os.path.isdir(root) else None
    kept = f"the last checkpoint, iteration {latest}, is untouched" if latest is not None else "nothing was saved"
    return DiskFullError(f"ENOSPC: the disk of {root} is full: {what} was abandoned and removed; {kept}. Free "
                         "space there, lower --keep-last-checkpoints, or pass another --save")


@contextmanager
def disk_full_is_one_line(root: str, staging: str, what: str):
    """A save into ``staging`` under ``root`` that fills the disk (ENOSPC) is abandoned whole: the staging
    directory removed, DiskFullError in one line; the previous checkpoint stays the latest."""
    try:
        yield
    except BaseException as e:  # torch's CheckpointException, which megatron-core raises for its writers, is one
        if isinstance(e, (KeyboardInterrupt, SystemExit)) or not disk_full(e, root):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_full_error(root, what) from None


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


def save_sharded(sharded_state: dict, ckpt_dir: str, content_metadata: dict, asynchronous: bool):
    """megatron-core's dist_checkpointing.save of ``sharded_state`` into ``ckpt_dir``, each shard file hashed
    as it is written (checksums.py), ``content_metadata`` recorded as Megatron-LM records it. Returns the
    request still to schedule when ``asynchronous``, else None once written (a collective)."""
    # deferred: megatron-core takes seconds to import; hf/relayout.py stages its output here without it
    from megatron.core import dist_checkpointing

    request = dist_checkpointing.save(sharded_state, ckpt_dir, async_sharded_save=True,
                                      content_metadata=content_metadata)
    if request.async_fn is not None:
        request = request._replace(async_fn=checksummed_writes(request.async_fn))
    if asynchronous:
        return request
    request.execute_sync()
    return None


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


class StagedSaves:
    """The save protocol of a run under --save ``root`` (module docstring), keeping the newest ``keep_last``
    checkpoints (None: all). Every rank makes the same calls (they are collectives)."""

    def __init__(self, root: str, keep_last: int | None):
        self.root, self.keep_last = root, keep_last
        self._async_queue, self._in_flight = None, 0
        if dist.get_rank() == 0:  # no save runs yet, and preflight holds root's lock: what is staged is a dead run's
            for name in remove_leftovers(root):
                print(f" removed {os.path.join(root, name)}, left by an interrupted save", flush=True)

    def save(self, iteration: int, write: Callable[[str], object]) -> None:
        """Save ``iteration``: ``write(staging)`` writes every rank's files into the staging directory and
        returns None once written, or megatron-core's request still to run (an asynchronous save, published by
        finish_pending once every rank has written). One asynchronous save in flight at most: a kill then
        loses at most two save intervals (docs/reliability.md)."""
        self.finish_pending(blocking=True)
        if not room_to_save(self.root, iteration):
            return
        staging = staging_dir(self.root, iteration)
        if dist.get_rank() == 0:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted save of this iteration
            os.makedirs(staging)
        dist.barrier()

        def finalize():
            if dist.get_rank() == 0:
                publish(self.root, iteration, staging, self.keep_last)

        with self._disk_full_is_one_line(iteration):
            request = write(staging)
        if request is not None:
            # deferred: megatron-core takes seconds to import; hf/relayout.py stages its output here without it
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            request.add_finalize_fn(finalize)
            self._async_queue = self._async_queue or AsyncCallsQueue()
            self._async_queue.schedule_async_request(request)
            self._in_flight = iteration
            return
        dist.barrier()
        with self._disk_full_is_one_line(iteration):
            finalize()
        dist.barrier()

    def finish_pending(self, blocking: bool) -> None:
        """Complete asynchronous saves (each is published only once all ranks have written it)."""
        if self._async_queue is not None:
            with self._disk_full_is_one_line(self._in_flight):
                self._async_queue.maybe_finalize_async_calls(blocking=blocking)

    def _disk_full_is_one_line(self, iteration: int):
        return disk_full_is_one_line(self.root, staging_dir(self.root, iteration), f"saving iteration {iteration}")


def publish(root: str, iteration: int, staging: str, keep_last: int | None = None) -> None:
    """Rename a whole checkpoint into place, then point the tracker at it (rank 0, once every rank has written)."""
    ckpt_dir = iteration_dir(root, iteration)
    write_manifest(staging)  # sizes and checksums, checked at --load
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_dead_staging(destination: str) -> list[str]:
    """Delete the staging directories (``DST.partial-*``) of earlier writes of ``destination`` whose writer has
    died (a killed conversion); one still being written keeps its lock and stays. Returns what was removed."""
    base = os.path.abspath(destination)
    dead = [path for path in sorted(glob.glob(glob.escape(base) + ".partial-*"))
            if os.path.isdir(path) and writer_is_dead(path)]
    for path in dead:
        shutil.rmtree(path, ignore_errors=True)
    return dead


@contextmanager
def staged_directory(destination: str, flag: str = "--save-dir"):
    """A fresh directory next to ``destination``, renamed to it when the block completes; removed if the block
    fails, so ``destination`` only ever appears whole (conversions and exports). Locked while it is written,
    so that the next write of ``destination`` removes it only if this one was killed; made with the user's
    file mode (umask), not the private one of a temporary directory."""
    if os.path.exists(destination):
        raise ConfigError(f"{flag} {destination} already exists; pass a new directory (nothing is overwritten)")
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    for path in remove_dead_staging(destination):
        print(f" removed {path}, left by an interrupted write of {destination}", flush=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(destination)) + ".partial-", dir=parent)
    os.chmod(staging, 0o777 & ~_umask())
    lock_directory(staging, flag)
    try:
        yield staging
        os.remove(os.path.join(staging, LOCK))
        os.rename(staging, destination)
    except BaseException as e:
        full = disk_full(e, parent)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise disk_full_error(parent, f"writing {destination}") from None
        raise
    finally:
        release(staging)
