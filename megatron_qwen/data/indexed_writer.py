"""Writing Megatron indexed datasets (`PREFIX.bin` + `PREFIX.idx`, SPEC section 8) fast and atomically.

The `.bin` is written in large chunks (one write per encoded batch, not per document) and the
`.idx` is computed with numpy; its bytes are identical to what megatron-core's
`IndexedDatasetBuilder` writes for the same documents (tests/test_data_indexed_writer.py checks).
Both files are written under `.tmp` names and renamed only when whole, `.idx` last: a shard whose
final `.idx` and `.bin` exist and agree is complete, anything else is redone.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<9sQBQQ")  # magic, version 1, dtype code, sequence count, document count


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def index_bytes(lengths: np.ndarray, dtype: type[np.number]) -> bytes:
    """The .idx of one-sequence-per-document data with these document lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] * DType.size(dtype), out=pointers[1:])
    header = _HEADER.pack(_INDEX_MAGIC, 1, DType.code_from_dtype(dtype), len(lengths), len(lengths) + 1)
    return b"".join(
        [header, lengths.astype(np.int32).tobytes(), pointers.tobytes(), np.arange(len(lengths) + 1, dtype=np.int64).tobytes()]
    )


class IndexedShardWriter:
    """One indexed dataset at `prefix`; use as a context manager (an exception discards it)."""

    def __init__(self, prefix: str, dtype: type[np.number] = np.int32):
        self.prefix = prefix
        self.dtype = np.dtype(dtype).type
        self.bin_tmp = prefix + ".bin.tmp"
        self.idx_tmp = prefix + ".idx.tmp"
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self.bin_tmp, "wb", buffering=0)
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as their concatenated tokens and per-document lengths."""
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._bin.write(memoryview(data).cast("B"))
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self.num_tokens += data.size

    def finish(self) -> None:
        """Write the index and rename both files to their final names."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        with open(self.idx_tmp, "wb") as f:
            f.write(index_bytes(lengths, self.dtype))
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(self.bin_tmp)
        os.replace(self.bin_tmp, self.prefix + ".bin")
        os.replace(self.idx_tmp, self.prefix + ".idx")

    def discard(self) -> None:
        self._bin.close()
        for path in (self.bin_tmp, self.idx_tmp):
            Path(path).unlink(missing_ok=True)

    def __enter__(self) -> "IndexedShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.discard()


def read_index_counts(prefix: str) -> tuple[int, int]:
    """(documents, tokens) of a finished dataset; ValueError if .idx/.bin are missing or disagree.

    Reads only the header and the last length and pointer, so it is instant on any size."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    if not (os.path.isfile(idx_path) and os.path.isfile(bin_path)):
        raise ValueError(f"no {os.path.basename(prefix)}.bin/.idx pair")
    with open(idx_path, "rb") as f:
        raw = f.read(_HEADER.size)
        if len(raw) != _HEADER.size:
            raise ValueError(f"{idx_path}: truncated header")
        magic, version, code, num_seq, num_docs = _HEADER.unpack(raw)
        if magic != _INDEX_MAGIC or version != 1:
            raise ValueError(f"{idx_path}: not a Megatron index (bad magic/version)")
        itemsize = DType.size(DType.dtype_from_code(code))
        end_bytes = 0
        if num_seq:
            f.seek(_HEADER.size + 4 * (num_seq - 1))
            last_length = np.frombuffer(f.read(4), dtype=np.int32)
            f.seek(_HEADER.size + 4 * num_seq + 8 * (num_seq - 1))
            last_pointer = np.frombuffer(f.read(8), dtype=np.int64)
            if len(last_length) != 1 or len(last_pointer) != 1:
                raise ValueError(f"{idx_path}: truncated")
            end_bytes = int(last_pointer[0]) + int(last_length[0]) * itemsize
    expected_size = _HEADER.size + num_seq * 12 + num_docs * 8
    if os.path.getsize(idx_path) < expected_size:
        raise ValueError(f"{idx_path}: truncated")
    if os.path.getsize(bin_path) != end_bytes:
        raise ValueError(f"{bin_path}: size does not match {idx_path} (an interrupted write?)")
    return num_docs - 1, end_bytes // itemsize


def is_complete(prefix: str) -> bool:
    try:
        read_index_counts(prefix)
    except ValueError:
        return False
    return True


def merge_datasets(prefixes: list[str], output_prefix: str) -> None:
    """Concatenate finished datasets into one with megatron-core's IndexedDatasetBuilder.add_index."""
    dtypes = set()
    for prefix in prefixes:
        read_index_counts(prefix)
        with open(prefix + ".idx", "rb") as f:
            dtypes.add(_HEADER.unpack(f.read(_HEADER.size))[2])
    if len(dtypes) != 1:
        raise ValueError(f"cannot merge datasets of different token dtypes (codes {sorted(dtypes)})")
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    bin_tmp, idx_tmp = output_prefix + ".bin.tmp", output_prefix + ".idx.tmp"
    try:
        builder = IndexedDatasetBuilder(bin_tmp, dtype=DType.dtype_from_code(dtypes.pop()))
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize(idx_tmp)
        _fsync_path(bin_tmp)
        _fsync_path(idx_tmp)
        os.replace(bin_tmp, output_prefix + ".bin")
        os.replace(idx_tmp, output_prefix + ".idx")
    except BaseException:
        for path in (bin_tmp, idx_tmp):
            Path(path).unlink(missing_ok=True)
        raise
