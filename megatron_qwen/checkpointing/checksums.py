"""Checksums of checkpoint files, computed from the bytes as they are written: a shard is never read back.

The digest is xxh3-128 (xxhash): fast enough to keep up with the writers (docs/reliability.md measures
the cost), and it catches corruption (a flipped bit, a torn copy). It is not a signature: tampering is what
the restricted unpickler and the path checks stop (unpickling.py, directory.contained).

A file written through ``hashing_open`` leaves its digest in ``DIGESTS/NAME`` beside it, whichever process
wrote it; ``manifest.write_manifest`` gathers them when the checkpoint is published. megatron-core's shard
writer and DeepSpeed's checkpoint engine are routed through it (``checksummed_writes``, ``HashingSaves``);
the few small files the libraries write by other means are hashed once at publish, from the page cache.
"""

import os
import queue
import threading

import xxhash

ALGORITHM = "xxh3_128"
DIGESTS = ".digests"  # in a checkpoint being written; removed when its manifest is written
_CHUNK = 16 * 2**20


_HELD = 2**20  # a buffer this large is hashed where it is (a tensor's storage); a smaller one is copied first


class HashingFile:
    """A file opened for writing ("wb") that hashes what is written to it, in order, and records the digest
    when it is closed whole: not when the block writing it failed, nor when bytes reached the file another
    way (torch's legacy serialization writes tensors through the descriptor; publish then hashes the file).

    With ``background``, a thread hashes while the writer goes on (xxhash releases the GIL), so the hashing
    overlaps the copies into the page cache and the final fsync. It reads a large buffer after write()
    returned: right for megatron-core's shard writer, whose large buffers are the storages of tensors it
    keeps until the file is closed; small ones (torch's zip headers) are copied."""

    def __init__(self, path, background: bool = False):
        self.name = os.fspath(path)
        self._file = open(self.name, "wb")
        self._hash = xxhash.xxh3_128()
        self._hashed = 0
        self._queue = queue.SimpleQueue() if background else None
        self._thread = threading.Thread(target=self._hash_queued, daemon=True) if background else None
        if self._thread:
            self._thread.start()

    def _hash_queued(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def write(self, data) -> int:
        written = self._file.write(data)
        self._hashed += written
        if self._queue is None:
            self._hash.update(data)
        else:
            whole = isinstance(data, bytes) or (isinstance(data, memoryview) and data.nbytes >= _HELD)
            self._queue.put(data if whole else bytes(data))
        return written

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self, failed: bool = False) -> None:
        if self._file.closed:
            return
        if self._thread:
            self._queue.put(None)
            self._thread.join()
        whole = not failed and os.fstat(self._file.fileno()).st_size == self._hashed
        self._file.close()
        if whole:
            folder, name = os.path.split(self.name)
            os.makedirs(os.path.join(folder, DIGESTS), exist_ok=True)
            with open(os.path.join(folder, DIGESTS, name), "w") as f:
                f.write(self._hash.hexdigest())

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.close(failed=kind is not None)


def hashing_open(path, mode: str = "wb", *args, **kwargs):
    """``open`` for megatron-core's shard writer: whole-file writes ("wb") are hashed (in the background),
    anything else is a plain open."""
    if mode == "wb" and not args and not kwargs:
        return HashingFile(path, background=True)
    return open(path, mode, *args, **kwargs)


class checksummed_writes:  # noqa: N801  (used like a function: checksummed_writes(fn)(...))
    """megatron-core's shard writer ``fn`` (the async_fn of the request dist_checkpointing.save returns) with
    every file it creates hashed as written. megatron-core 0.16.1 opens its .distcp files with the builtin
    ``open`` in filesystem_async.write_preloaded_data, in this process or in workers it forks from it: the
    name is shadowed in that module for the call. Picklable, for an async save run in another process."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        # deferred: megatron-core takes seconds to import; saving.py imports this module, hf/relayout.py it
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        filesystem_async.open = hashing_open
        try:
            return self.fn(*args, **kwargs)
        finally:
            del filesystem_async.open


class HashingSaves:
    """DeepSpeed's checkpoint engine ``inner`` with every file it saves hashed as written: its ``save(state,
    path)`` is torch.save, which writes as well to the open file it is given."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str) -> None:
        with HashingFile(path) as f:
            self.inner.save(state_dict, f)


def file_digest(path: str) -> str:
    """The digest of a whole file, read in chunks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_digest(path: str) -> str | None:
    """The digest the writer of ``path`` recorded (None if it was written another way)."""
    folder, name = os.path.split(path)
    record = os.path.join(folder, DIGESTS, name)
    return open(record).read().strip() if os.path.isfile(record) else None
