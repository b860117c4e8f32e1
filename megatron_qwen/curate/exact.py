"""Step 2: exact dedup after normalization, with datatrove's three exact-dedup stages (signature, find,
filter) and our normalization as the hashed content: texts that differ only in case, whitespace,
punctuation or full-width/half-width forms hash alike. The first occurrence (lowest task, then document
index) is kept."""

# no `from __future__ import annotations`: datatrove reads the return type of `normalized_content` to pick the hash

from datatrove.data import Document
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)

from megatron_qwen.curate.text import normalize_text


def normalized_content(doc: Document) -> bytes:
    return normalize_text(doc.text).encode()


def exact_dedup_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=normalized_content)


def exact_signature(folder: str, finder_workers: int = 1) -> ExactDedupSignature:
    return ExactDedupSignature(folder, exact_dedup_config(), finder_workers=finder_workers)


def exact_find(signature_folder: str, duplicates_folder: str) -> ExactFindDedups:
    return ExactFindDedups(signature_folder, duplicates_folder, config=exact_dedup_config())


def exact_filter(duplicates_folder: str) -> ExactDedupFilter:
    return ExactDedupFilter(duplicates_folder, config=exact_dedup_config())
