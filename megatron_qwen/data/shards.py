"""The shard format: Megatron's indexed datasets (`PREFIX.bin` + `PREFIX.idx`, docs/qwen.md section 8),
their names, writing, checking and merging. Preprocessing writes shards with this module and the
training datasets check them with it; it needs neither the tokenizer nor megatron-core.

Names: a dataset is `{output_prefix}[_{shard}]_{key}_document` (Megatron-LM's naming: key `text`
for pretraining, `messages` for ChatML SFT), and an SFT dataset's loss mask is the companion
dataset `{prefix}_loss_mask` (uint8, the same documents).

Writing: the `.bin` is written in large chunks (one write per encoded block, not per document)
and the `.idx` is computed with numpy; its bytes are identical to what megatron-core's
`IndexedDatasetBuilder` writes for the same documents (tests/test_data_shards.py checks). Both
files are written under `.tmp` names and renamed only when whole, `.idx` last: a shard whose final
`.idx` and `.bin` exist and agree is complete, anything else is redone.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

TEXT_KEY = "text"  # default json key of pretraining records
MESSAGES_KEY = "messages"  # default json key of ChatML SFT records
PAIRS_KEY = "pairs"  # the dataset of comparison pairs (data/pairs.py)
LOSS_MASK_SUFFIX = "_loss_mask"

INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<9sQBQQ")  # magic, version 1, dtype code, sequence count, document count + 1
# The dtype codes of the .idx header (docs/qwen.md section 8).
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}
REDO = "rerun tools/preprocess_data.py for it"


class ShardError(ValueError):
    """A missing, unreadable or inconsistent dataset; the message is one line naming the file."""


def dataset_prefix(output_prefix: str, key: str, shard: str | None = None) -> str:
    """Megatron's naming: `{output_prefix}_{key}_document`, with the shard name before the key."""
    return f"{output_prefix}_{shard}_{key}_document" if shard else f"{output_prefix}_{key}_document"


def output_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot name a dataset's files ("data/" would write "data/_text_document.bin"), or None."""
    if not os.path.basename(prefix):
        return (f"--output-prefix {prefix} ends in a folder; add the start of a file name, e.g. "
                f"{os.path.join(prefix, 'web')}")
    return None


def loss_mask_prefix(prefix: str) -> str:
    """The loss-mask companion of an SFT token dataset."""
    return prefix + LOSS_MASK_SUFFIX


def is_loss_mask(prefix: str) -> bool:
    return prefix.endswith(LOSS_MASK_SUFFIX)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def index_bytes(lengths: np.ndarray, dtype: type[np.number], document_indices: np.ndarray | None = None) -> bytes:
    """The .idx of sequences with these lengths; by default one sequence per document."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if document_indices is None:
        document_indices = np.arange(len(lengths) + 1, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] * np.dtype(dtype).itemsize, out=pointers[1:])
    header = _HEADER.pack(INDEX_MAGIC, 1, _CODE_OF[np.dtype(dtype).type], len(lengths), len(document_indices))
    return b"".join([header, lengths.astype(np.int32).tobytes(), pointers.tobytes(),
                     np.asarray(document_indices, dtype=np.int64).tobytes()])


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
        _write_index(self.idx_tmp, index_bytes(lengths, self.dtype))
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


def _write_index(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _header(prefix: str) -> tuple[type[np.number], int, int]:
    """(dtype, sequences, documents) from the .idx header, checked against the .idx size."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise ShardError(f"{path} not found; create the dataset with tools/preprocess_data.py "
                             "(pass its prefix, without .bin/.idx)")
    with open(idx_path, "rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) != _HEADER.size:
        raise ShardError(f"{idx_path}: {len(raw)} bytes, shorter than an index header; {REDO}")
    magic, version, code, num_seq, num_doc_indices = _HEADER.unpack(raw)
    if magic != INDEX_MAGIC:
        raise ShardError(f"{idx_path}: not a Megatron index (magic {magic!r}, expected {INDEX_MAGIC!r}); {REDO}")
    if version != 1:
        raise ShardError(f"{idx_path}: index version {version}, only version 1 exists; {REDO}")
    if code not in DTYPE_CODES:
        raise ShardError(f"{idx_path}: unknown token dtype code {code} (known: 1-8); {REDO}")
    if not np.issubdtype(DTYPE_CODES[code], np.integer):
        raise ShardError(f"{idx_path}: token dtype code {code} is {np.dtype(DTYPE_CODES[code]).name}; token ids are "
                         f"integers (codes 1-5, 8); {REDO}")
    if num_doc_indices < 1:
        raise ShardError(f"{idx_path}: no document index (Megatron's start with 0); {REDO}")
    expected = _HEADER.size + 12 * num_seq + 8 * num_doc_indices
    if os.path.getsize(idx_path) < expected:
        raise ShardError(f"{idx_path}: {os.path.getsize(idx_path)} bytes, its header announces {expected}; {REDO}")
    return DTYPE_CODES[code], num_seq, num_doc_indices - 1


def token_dtype(prefix: str) -> type[np.number]:
    """The token dtype a dataset's .idx declares."""
    return _header(prefix)[0]


def read_index_counts(prefix: str) -> tuple[int, int]:
    """(documents, tokens) of a finished dataset; ShardError (one line) if .idx/.bin are missing,
    unreadable or disagree. Reads only the header and the last length and pointer: instant on any size."""
    dtype, num_seq, num_docs = _header(prefix)
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    end_bytes = 0
    with open(idx_path, "rb") as f:
        f.seek(_HEADER.size + 12 * num_seq + 8 * num_docs)
        (last_document_start,) = struct.unpack("<q", f.read(8))
        if num_seq:
            f.seek(_HEADER.size + 4 * (num_seq - 1))
            (last_length,) = struct.unpack("<i", f.read(4))
            f.seek(_HEADER.size + 4 * num_seq + 8 * (num_seq - 1))
            (last_pointer,) = struct.unpack("<q", f.read(8))
            end_bytes = last_pointer + last_length * np.dtype(dtype).itemsize
    if last_document_start != num_seq:  # the document index ends at the sequence count
        raise ShardError(f"{idx_path}: its document index ends at {last_document_start}, not at its "
                         f"{num_seq} sequences (a damaged header or index); {REDO}")
    bin_size = os.path.getsize(bin_path)
    if bin_size != end_bytes:
        raise ShardError(f"{bin_path}: {bin_size} bytes, but {os.path.basename(idx_path)} describes {end_bytes} "
                         f"(a .bin and .idx of different runs, or an interrupted write); {REDO}")
    return num_docs, end_bytes // np.dtype(dtype).itemsize


INDEX_CHUNK = 1 << 22  # sequences of the .idx checked at a time: bounded memory on any size


def check_index(prefix: str) -> tuple[int, int]:
    """(documents, tokens) of a dataset whose whole .idx is checked against its .bin: read_index_counts'
    checks, then every sequence length non-negative and every pointer where the lengths before it put it
    (so monotone and inside the .bin), the document index rising from 0 to the sequence count. ShardError
    naming the file and the first bad sequence. Reads the .idx once, in chunks (12 bytes a sequence)."""
    counts = read_index_counts(prefix)
    dtype, num_seq, num_docs = _header(prefix)
    idx_path, itemsize = prefix + ".idx", np.dtype(dtype).itemsize
    lengths = np.memmap(idx_path, np.int32, "r", _HEADER.size, (num_seq,)) if num_seq else np.zeros(0, np.int32)
    pointers = np.memmap(idx_path, np.int64, "r", _HEADER.size + 4 * num_seq, (num_seq,)) if num_seq else lengths
    expected = 0  # bytes of the sequences before the chunk
    for start in range(0, num_seq, INDEX_CHUNK):
        chunk = lengths[start:start + INDEX_CHUNK].astype(np.int64)
        negative = np.flatnonzero(chunk < 0)
        if negative.size:
            i = start + int(negative[0])
            raise ShardError(f"{idx_path}: sequence {i} has length {lengths[i]}; {REDO}")
        ends = expected + np.cumsum(chunk * itemsize)
        starts = np.concatenate([[expected], ends[:-1]])
        wrong = np.flatnonzero(pointers[start:start + INDEX_CHUNK] != starts)
        if wrong.size:
            i = start + int(wrong[0])
            raise ShardError(f"{idx_path}: sequence {i} points at byte {pointers[i]} of the .bin, but the lengths "
                             f"before it add up to byte {starts[wrong[0]]} (a damaged index); {REDO}")
        expected = int(ends[-1])
    documents = np.fromfile(idx_path, np.int64, num_docs + 1, offset=_HEADER.size + 12 * num_seq)
    if documents[0] != 0 or (np.diff(documents) < 0).any():
        raise ShardError(f"{idx_path}: its document index does not rise from 0 (a damaged index); {REDO}")
    return counts


def is_complete(prefix: str) -> bool:
    try:
        read_index_counts(prefix)
    except ShardError:
        return False
    return True


def _read_index(prefix: str) -> tuple[type[np.number], np.ndarray, np.ndarray]:
    """(dtype, sequence lengths, document indices) of a complete dataset."""
    check_index(prefix)
    dtype, num_seq, num_docs = _header(prefix)
    exact = _HEADER.size + 12 * num_seq + 8 * (num_docs + 1)
    if os.path.getsize(prefix + ".idx") != exact:
        raise ShardError(f"{prefix}.idx: has data after the document indices (a multimodal index?); only "
                         "text indices can be merged")
    with open(prefix + ".idx", "rb") as f:
        f.seek(_HEADER.size)
        lengths = np.fromfile(f, dtype=np.int32, count=num_seq)
        f.seek(_HEADER.size + 12 * num_seq)
        document_indices = np.fromfile(f, dtype=np.int64, count=num_docs + 1)
    return dtype, lengths, document_indices


def sequence_lengths(prefix: str) -> np.ndarray:
    """The sequence lengths (tokens) of a complete dataset, read from its .idx."""
    return _read_index(prefix)[1]


def merge_datasets(prefixes: list[str], output_prefix: str) -> None:
    """Concatenate complete datasets into one, in the given order; the same bytes as megatron-core's
    IndexedDatasetBuilder.add_index of each (tests/test_data_shards.py checks)."""
    indices = [_read_index(p) for p in prefixes]
    dtypes = {np.dtype(dtype).name for dtype, _, _ in indices}
    if len(dtypes) != 1:
        raise ShardError(f"cannot merge datasets of different token dtypes ({', '.join(sorted(dtypes))})")
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    bin_tmp, idx_tmp = output_prefix + ".bin.tmp", output_prefix + ".idx.tmp"
    lengths, document_indices, offset = [], [np.zeros(1, dtype=np.int64)], 0
    for _, seq_lengths, doc_indices in indices:
        lengths.append(seq_lengths)
        document_indices.append(doc_indices[1:] + offset)
        offset += len(seq_lengths)
    try:
        with open(bin_tmp, "wb") as out:
            for prefix in prefixes:
                with open(prefix + ".bin", "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
        _write_index(idx_tmp, index_bytes(np.concatenate(lengths), indices[0][0], np.concatenate(document_indices)))
        os.replace(bin_tmp, output_prefix + ".bin")
        os.replace(idx_tmp, output_prefix + ".idx")
    except BaseException:
        for path in (bin_tmp, idx_tmp):
            Path(path).unlink(missing_ok=True)
        raise


SCAN_BUDGET = 16 << 20  # bytes of each .bin read by the token-id check: whole below it, evenly spaced blocks above


def find_token_id_outside(prefix: str, vocab_size: int, budget: int = SCAN_BUDGET) -> tuple[int, int] | None:
    """(document, token id) of a token id outside 0..``vocab_size``-1 in the dataset at ``prefix`` (a shard
    tokenized for another vocabulary, or damaged), else None. Reads the whole .bin up to ``budget`` bytes,
    and beyond that 64 evenly spaced blocks totalling ``budget``: a bounded cost on any size that catches a
    wrongly tokenized shard (every block has such ids) but not a few stray ids in a huge one; those are
    caught as the loader reads their sample (data/pretrain.py)."""
    dtype = _header(prefix)[0]
    itemsize = np.dtype(dtype).itemsize
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    if tokens.size * itemsize <= budget:
        starts, block = [0], tokens.size
    else:
        block = budget // 64 // itemsize
        starts = np.linspace(0, tokens.size - block, 64).astype(np.int64)
    for start in starts:
        chunk = tokens[start:start + block]
        bad = np.flatnonzero((chunk < 0) | (chunk >= vocab_size))
        if bad.size:
            return document_at(prefix, int(start + bad[0])), int(chunk[bad[0]])
    return None


def document_at(prefix: str, token: int) -> int:
    """The sequence (a document, in pretraining shards) holding the ``token``-th token of the .bin."""
    dtype, num_seq, _ = _header(prefix)
    pointers = np.memmap(prefix + ".idx", dtype=np.int64, mode="r", offset=_HEADER.size + 4 * num_seq,
                         shape=(num_seq,))
    return int(np.searchsorted(pointers, token * np.dtype(dtype).itemsize, side="right")) - 1
