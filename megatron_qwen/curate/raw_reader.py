"""Step 1's reader: raw jsonl records to datatrove documents, reading every record it can and counting every
one it cannot.

datatrove's JsonlReader (0.10.1) ends a file at its first line of invalid UTF-8: it catches the
UnicodeDecodeError around the whole file, as huggingface/datatrove PR #78 chose for a half-uploaded last
section, so every good line after it is lost behind one WARNING; and a line that is JSON but not an object
stops the task with an AttributeError. This reader parses with data/sources.py, as tools/preprocess_data.py
does: a bad line is skipped, counted by reason in the stage's statistics (`bad_<reason>`) and written with
its file and line to `OUT/logs/extract/bad_records/<task>.txt`; the rest of the file is read.
"""

from __future__ import annotations

import os

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from megatron_qwen.data.sources import parse_block, read_blocks

BAD_RECORDS = "bad_records"  # the folder of the located bad lines, in the stage's log folder


def stat_key(reason: str) -> str:
    """A bad record's reason as a statistics key: "invalid UTF-8" -> "bad_invalid_utf-8"."""
    return "bad_" + reason.lower().replace(" ", "_").replace("'", "")


class RawJsonlReader(BaseDiskReader):
    """A record is a document with its text from ``text_key``, else HTML from ``html_key`` (marked `html` for
    HtmlExtraction); its `source` is the record's (a plain folder name: step 6 writes a folder per source),
    else ``sources[file]``; its id the record's `id`, else FILE/N (N: its place among the file's good
    records)."""

    name = "raw jsonl (data/sources.py)"

    def __init__(self, root: str, paths_file: str, text_key: str, html_key: str, sources: dict[str, str],
                 log_folder: str):
        super().__init__(root, paths_file=paths_file, add_file_path=False, text_key=text_key)
        self.html_key, self.sources, self.log_folder = html_key, sources, log_folder
        self._bad_lines = None

    def check(self, obj, source: str):
        """The document's fields, or why the record is bad."""
        if not isinstance(obj, dict):
            return "not a JSON object"
        key = self.text_key if self.text_key in obj else self.html_key if self.html_key in obj else None
        if key is None:
            return f"no {self.text_key!r} or {self.html_key!r} key"
        text = obj.pop(key)
        if not isinstance(text, str):
            return "non-string text"
        if not text.strip():
            return "empty text"
        if key != self.text_key:
            obj["html"] = True
        obj.setdefault("source", source)
        if not isinstance(obj["source"], str) or obj["source"] in ("", ".", "..") or "/" in obj["source"]:
            return "source is not a folder name"
        return obj, text

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = os.path.join(self.log_folder, BAD_RECORDS)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{rank:05d}.txt"), "w", encoding="utf-8") as self._bad_lines:
            yield from super().run(data, rank, world_size)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        path = self.data_folder.resolve_paths(filepath)
        source = self.sources.get(filepath, os.path.splitext(os.path.basename(filepath))[0])
        good = 0
        for block in read_blocks(path, []):
            with self.track_time():
                batch = parse_block(block, lambda obj: self.check(obj, source))
            for where, reason in batch.bad:
                self.stat_update(stat_key(reason))
                self._bad_lines.write(f"{path}:{where}: {reason}\n")
            for metadata, text in batch.records:
                doc_id = str(metadata.pop("id", f"{filepath}/{good}"))
                good += 1
                yield Document(text=text, id=doc_id, metadata=metadata)


def bad_records(log_folder: str) -> list[str]:
    """Every located bad line of a finished extract stage ("FILE:LINE: reason"), task by task."""
    folder = os.path.join(log_folder, BAD_RECORDS)
    lines = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            lines += f.read().splitlines()
    return lines
