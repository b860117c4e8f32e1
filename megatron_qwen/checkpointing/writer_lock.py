"""One writer per directory: an advisory lock (fcntl.flock) on a small file inside it, which the kernel
releases when the process holding it dies, however it dies. A second run on the same --save stops in one
line before it touches anything, and what a writer left behind is removed only once its lock is free.

The lock file holds the writer's host, process id and start time, for the message the next one prints.
Where the filesystem has no flock (some Lustre mounts), the lock is skipped with a warning.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager

from megatron_qwen.config.errors import ConfigError

LOCK = ".writer.lock"
_held: dict[str, int] = {}  # directory -> descriptor of its lock file, for this process's lifetime or release()


def _try_lock(path: str) -> int | None:
    """A descriptor of ``path`` (created if needed) holding its lock; None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            print(f"warning: {path}: this filesystem has no file locks ({e.strerror}); nothing stops a second run "
                  "from writing to the same directory", file=sys.stderr, flush=True)
            return -1
        raise


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            who = json.load(f)
        return f"process {who['pid']} on {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_directory(directory: str, flag: str = "--save") -> None:
    """Make this process the one writer of ``directory`` (created if needed) until it exits or release()s it;
    ConfigError in one line naming the holder when another live process is writing there."""
    if directory in _held:
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK)
    fd = _try_lock(path)
    if fd is None:
        raise ConfigError(f"{flag} {directory} is being written by {_holder(path)} (it holds {path}); one run "
                          "writes a directory at a time: wait for it to end, or pass another directory")
    if fd >= 0:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    _held[directory] = fd


def release(directory: str) -> None:
    """Give up the lock on ``directory`` (the kernel does it anyway when the process ends)."""
    fd = _held.pop(directory, -1)
    if fd >= 0:
        os.close(fd)


def writer_is_dead(directory: str) -> bool:
    """True when no live process holds ``directory``'s lock (or it has none): what it holds may be removed."""
    path = os.path.join(directory, LOCK)
    if not os.path.isfile(path):
        return True
    fd = _try_lock(path)
    if fd is None:
        return False
    if fd >= 0:
        os.close(fd)
    return True


@contextmanager
def waiting_for(directory: str):
    """Hold ``directory``'s lock for the block, waiting while another live process holds it: a job that finds
    another converting into the same place waits for it, then finds its result (and only a dead one's
    leftovers)."""
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        os.close(fd)
