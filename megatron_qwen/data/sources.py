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

from megatron_qwen.tokenizer.chatml import ChatFormatError, validate_messages

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
BLOCK_BYTES = 1 << 20  # bytes of (decompressed) input per batch (~250k tokens): short pipeline fill/drain per shard


def splittable(path: str) -> bool:
    """Only plain .jsonl can be read from any byte offset; compressed streams and parquet cannot."""
    return path.endswith(".jsonl")


class InputError(ValueError):
    """Unusable input (missing file, unsupported suffix, nothing matched); one-line message."""


class BadRecordError(ValueError):
    """A bad record under --strict; the message names file, line and reason."""


def _supported(path: str) -> bool:
    return path.endswith(INPUT_SUFFIXES)


def expand_inputs(specs: list[str]) -> list[str]:
    """Files named by `--input` entries (files, directories searched recursively, globs), sorted."""
    files: set[str] = set()
    for spec in specs:
        if os.path.isdir(spec):
            found = [os.path.join(root, name) for root, _, names in os.walk(spec) for name in names]
            matched = [f for f in found if _supported(f)]
            if not matched:
                raise InputError(f"--input {spec}: directory holds no {'/'.join(INPUT_SUFFIXES)} files")
        elif os.path.isfile(spec):
            if not _supported(spec):
                raise InputError(f"--input {spec}: unsupported file type; expected one of {', '.join(INPUT_SUFFIXES)}")
            matched = [spec]
        elif glob.has_magic(spec):
            matched = [f for f in glob.glob(spec, recursive=True) if os.path.isfile(f) and _supported(f)]
            if not matched:
                raise InputError(f"--input {spec}: the pattern matches no {'/'.join(INPUT_SUFFIXES)} files")
        else:
            raise InputError(f"--input {spec}: no such file or directory")
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
class Batch:
    """Good records of one block of input, and the bad ones as (location, reason): the line (parquet:
    row) number, or "byte N" (the line's offset) in a byte range, whose line numbers are unknown."""

    records: list[Any] = field(default_factory=list)
    bad: list[tuple[int | str, str]] = field(default_factory=list)
    input_bytes: int = 0  # uncompressed bytes of this block
    position: int = 0  # bytes of the (compressed) file (range) consumed so far, for ETA


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


# --- reading ---------------------------------------------------------------------------------------
def _open_stream(path: str, raw: io.BufferedReader) -> io.RawIOBase:
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _jsonl_batches(path: str, check: Callable[[Any], Any], start: int = 0, end: int | None = None) -> Iterator[Batch]:
    """The whole file, or (end given; plain .jsonl only) the lines whose first byte lies in [start, end)."""
    ranged = end is not None
    with open(path, "rb") as raw:
        stream = _open_stream(path, raw)
        offset = 0  # file offset of the next line (of `tail`)
        if start:
            # The line holding byte start-1 belongs to an earlier range; skip past its newline, so a
            # line beginning exactly at `start` is kept.
            raw.seek(start - 1)
            offset = start - 1 + len(raw.readline())
        tail = b""
        lineno = 0
        while True:
            try:
                block = stream.read(BLOCK_BYTES)
            except Exception as e:  # corrupt/truncated gzip or zstd: each library raises its own type
                where = f"byte {offset}" if ranged else f"line {lineno}"
                raise InputError(f"{path}: cannot read after {where} ({type(e).__name__}: {e})") from None
            if not block and not tail:
                return
            lines = (tail + block).split(b"\n")
            # The last piece may be a partial line; at end of file it is the last line.
            tail = lines.pop() if block else b""
            last = not block
            if ranged and offset + sum(map(len, lines)) + len(lines) > end:
                lines = _lines_before(lines, end - offset)  # the range ends within this block
                last = True
            batch = Batch(input_bytes=sum(map(len, lines)) + len(lines),
                          position=min(raw.tell(), end) - start if ranged else raw.tell())
            for line in lines:
                lineno += 1
                line_start = offset
                offset += len(line) + 1
                if not line.strip():
                    continue  # blank lines separate nothing in jsonl; not an error
                try:
                    result = check(orjson.loads(line))
                except orjson.JSONDecodeError:
                    try:
                        line.decode("utf-8")
                        result = "malformed JSON"
                    except UnicodeDecodeError:
                        result = "invalid UTF-8"
                if isinstance(result, str):
                    batch.bad.append((f"byte {line_start}" if ranged else lineno, result))
                else:
                    batch.records.append(result)
            yield batch
            if last:
                return


def _lines_before(lines: list[bytes], limit: int) -> list[bytes]:
    """The leading lines that start before `limit` bytes from the first line's start."""
    kept, pos = [], 0
    for line in lines:
        if pos >= limit:
            break
        kept.append(line)
        pos += len(line) + 1
    return kept


def _parquet_batches(path: str, keys: list[str], check: Callable[[Any], Any]) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise InputError(f"{path}: not a readable parquet file ({e})") from None
    columns = [k for k in keys if k in pf.schema_arrow.names]
    rowno = 0
    total_rows = max(pf.metadata.num_rows, 1)
    file_size = os.path.getsize(path)
    for record_batch in pf.iter_batches(batch_size=4096, columns=columns):
        values = {k: record_batch.column(k).to_pylist() for k in columns}
        batch = Batch()
        for i in range(record_batch.num_rows):
            rowno += 1
            result = check({k: values[k][i] for k in columns if values[k][i] is not None})
            if isinstance(result, str):
                batch.bad.append((rowno, result))
            else:
                batch.records.append(result)
        batch.input_bytes = record_batch.nbytes
        batch.position = file_size * rowno // total_rows
        yield batch


def read_batches(path: str, keys: list[str], check: Callable[[Any], Any], start: int = 0,
                 end: int | None = None) -> Iterator[Batch]:
    """Batches of checked records of one input file, or of its byte range [start, end) (see
    `splittable`): the lines whose first byte lies in the range."""
    if path.endswith(".parquet"):
        return _parquet_batches(path, keys, check)
    return _jsonl_batches(path, check, start, end)
