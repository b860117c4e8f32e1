"""Raw corpora in: finding input files, reading them in batches, and checking each record.

Records are checked where they are read; a bad one (malformed JSON, missing key, non-string
value, invalid UTF-8, empty text, malformed conversation) is dropped and reported with its file
and line number (parquet: row number; a byte range of a plain .jsonl: the line's byte offset, as
its line numbers are unknown without reading the file up to it), and the rest is still read.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson
import zstandard

from megatron_qwen.tokenizer.chatml import ChatFormatError, validate_messages

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
BLOCK_BYTES = 1 << 20  # bytes of (decompressed) input per block (~250k tokens): short pipeline fill/drain per shard


def splittable(path: str) -> bool:
    """Only plain .jsonl can be read from any byte offset; compressed streams and parquet cannot."""
    return path.endswith(".jsonl")


class InputError(ValueError):
    """Unusable input (missing file, unsupported suffix, nothing matched); one-line message."""


class BadRecordError(ValueError):
    """A bad record under --strict; the message names file, line and reason."""


def _supported(path: str) -> bool:
    return path.endswith(INPUT_SUFFIXES)


def expand_inputs(specs: list[str], flag: str = "--input") -> list[str]:
    """Files named by the entries of ``flag`` (files, directories searched recursively, globs), sorted."""
    files: set[str] = set()
    for spec in specs:
        if os.path.isdir(spec):
            found = [os.path.join(root, name) for root, _, names in os.walk(spec) for name in names]
            matched = [f for f in found if _supported(f)]
            if not matched:
                raise InputError(f"{flag} {spec}: directory holds no {'/'.join(INPUT_SUFFIXES)} files")
        elif os.path.isfile(spec):
            if not _supported(spec):
                raise InputError(f"{flag} {spec}: unsupported file type; expected one of {', '.join(INPUT_SUFFIXES)}")
            matched = [spec]
        elif glob.has_magic(spec):
            matched = [f for f in glob.glob(spec, recursive=True) if os.path.isfile(f) and _supported(f)]
            if not matched:
                raise InputError(f"{flag} {spec}: the pattern matches no {'/'.join(INPUT_SUFFIXES)} files")
        else:
            raise InputError(f"{flag} {spec}: no such file or directory")
        files.update(os.path.abspath(f) for f in matched)
    return sorted(files)


def shard_names(files: list[str]) -> list[str]:
    """A stable name per input file: its path relative to the files' common folder, suffix dropped,
    '/' made '-'. Stable under adding files elsewhere, so reruns and array tasks agree."""
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    names = []
    for f in files:
        rel = os.path.relpath(f, root)
        for suffix in INPUT_SUFFIXES:
            if rel.endswith(suffix):
                rel = rel[: -len(suffix)]
                break
        names.append(rel.replace(os.sep, "-"))
    seen: dict[str, str] = {}
    for f, name in zip(files, names):
        if name in seen:
            raise InputError(f"--input {seen[name]} and {f} would both become shard {name!r}; rename one")
        seen[name] = f
    return names


@dataclass
class Block:
    """A piece of one input file (range), read but not yet parsed or checked: whole jsonl lines
    (`lines`) or parquet rows (`rows`). Parsing is part of the work spread over threads or processes."""

    lines: bytes = b""
    rows: list[dict] | None = None
    first: int = 0  # lines (rows) of the file before this block
    offset: int | None = None  # a byte-range shard's file offset of `lines`; bad records are located by it
    input_bytes: int = 0  # uncompressed bytes of this block
    position: int = 0  # bytes of the (compressed) file (range) consumed so far, for ETA


@dataclass
class Batch:
    """Good records of one block, and the bad ones as (location, reason): the line (parquet: row)
    number, or "byte N" (the line's offset) in a byte range, whose line numbers are unknown."""

    records: list[Any] = field(default_factory=list)
    bad: list[tuple[int | str, str]] = field(default_factory=list)


# --- checking one decoded record ------------------------------------------------------------------
def text_record_checker(keys: list[str]) -> Callable[[Any], Any]:
    """Return check(obj) -> tuple of texts (one per key), or a reason string if bad."""

    def check(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return "malformed JSON"  # valid JSON, but not an object
        texts = []
        for key in keys:
            if key not in obj:
                return "missing key"
            value = obj[key]
            if not isinstance(value, str):
                return "non-string value"
            if not value:
                return "empty text"
            texts.append(value)
        return tuple(texts)

    return check


def chat_record_checker(key: str) -> Callable[[Any], Any]:
    """Return check(obj) -> list of (role, content) turns, or a reason string if bad."""

    def check(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return "malformed JSON"
        if key not in obj:
            return "missing key"
        try:
            return validate_messages(obj[key])
        except ChatFormatError as e:
            return f"malformed conversation: {e}"

    return check


def parse_block(block: Block, check: Callable[[Any], Any]) -> Batch:
    """Parse (orjson) and check every record of a block."""
    batch = Batch()
    if block.rows is not None:
        for rowno, row in enumerate(block.rows, block.first + 1):
            result = check(row)
            if isinstance(result, str):
                batch.bad.append((rowno, result))
            else:
                batch.records.append(result)
        return batch
    offset = block.offset or 0
    for lineno, line in enumerate(block.lines.split(b"\n"), block.first + 1):
        line_start = offset
        offset += len(line) + 1
        if not line.strip():
            continue  # blank lines separate nothing in jsonl; not an error (nor is the split's last piece)
        try:
            result = check(orjson.loads(line))
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
                result = "malformed JSON"
            except UnicodeDecodeError:
                result = "invalid UTF-8"
        if isinstance(result, str):
            batch.bad.append((lineno if block.offset is None else f"byte {line_start}", result))
        else:
            batch.records.append(result)
    return batch


# --- reading ---------------------------------------------------------------------------------------
def _open_stream(path: str, raw: io.BufferedReader) -> io.RawIOBase:
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if path.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _jsonl_blocks(path: str, start: int = 0, end: int | None = None) -> Iterator[Block]:
    """Blocks of whole lines of the file, or (end given; plain .jsonl only) of the lines whose first
    byte lies in [start, end)."""
    ranged = end is not None
    with open(path, "rb") as raw:
        stream = _open_stream(path, raw)
        offset = 0  # file offset of the next line
        if start:
            # The line holding byte start-1 belongs to an earlier range; skip past its newline, so a
            # line beginning exactly at `start` is kept.
            raw.seek(start - 1)
            offset = start - 1 + len(raw.readline())
        partial: list[bytes] = []  # the beginning of a line not yet complete
        lines_before = 0
        while not (ranged and offset >= end):
            try:
                chunk = stream.read(BLOCK_BYTES)
            except Exception as e:  # corrupt/truncated gzip or zstd: each library raises its own type
                where = f"byte {offset}" if ranged else f"line {lines_before}"
                raise InputError(f"{path}: cannot read after {where} ({type(e).__name__}: {e})") from None
            if chunk:
                cut = chunk.rfind(b"\n") + 1
                if not cut:  # no line ends in this chunk
                    partial.append(chunk)
                    continue
                lines = b"".join([*partial, chunk[:cut]])
                partial = [chunk[cut:]]
            else:
                lines = b"".join(partial)  # the last line, without a newline
            if ranged and offset + len(lines) > end:
                # The range ends here: keep the lines starting before `end`, the last being the one
                # holding byte end-1 (finished past `end`).
                stop = lines.find(b"\n", end - offset - 1)
                lines = lines[:stop + 1] if stop >= 0 else lines
            if lines:
                yield Block(lines=lines, first=lines_before, offset=offset if ranged else None, input_bytes=len(lines),
                            position=min(raw.tell(), end) - start if ranged else raw.tell())
            if not chunk:
                return
            lines_before += lines.count(b"\n")
            offset += len(lines)


def _parquet_blocks(path: str, keys: list[str]) -> Iterator[Block]:
    # deferred: pyarrow takes half a second to import; only parquet inputs need it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise InputError(f"{path}: not a readable parquet file ({e})") from None
    columns = [k for k in keys if k in pf.schema_arrow.names]
    rows_before = 0
    total_rows = max(pf.metadata.num_rows, 1)
    file_size = os.path.getsize(path)
    for record_batch in pf.iter_batches(batch_size=4096, columns=columns):
        values = {k: record_batch.column(k).to_pylist() for k in columns}
        rows = [{k: values[k][i] for k in columns if values[k][i] is not None} for i in range(record_batch.num_rows)]
        yield Block(rows=rows, first=rows_before, input_bytes=record_batch.nbytes,
                    position=file_size * (rows_before + len(rows)) // total_rows)
        rows_before += len(rows)


def read_blocks(path: str, keys: list[str], start: int = 0, end: int | None = None) -> Iterator[Block]:
    """Blocks (about BLOCK_BYTES each) of one input file, or of its byte range [start, end) (see
    `splittable`): the lines whose first byte lies in the range."""
    if path.endswith(".parquet"):
        return _parquet_blocks(path, keys)
    return _jsonl_blocks(path, start, end)
