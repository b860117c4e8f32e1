"""The shard format: our writer and merge against megatron-core's IndexedDatasetBuilder/IndexedDataset,
and the header-only shard check behind --data-path."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_qwen.data import DataPathError, check_data_path
from megatron_qwen.data.shards import (
    IndexedShardWriter,
    ShardError,
    is_complete,
    loss_mask_prefix,
    merge_datasets,
    read_index_counts,
)


def _docs(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 151851, size=rng.integers(1, 300), dtype=np.int32) for _ in range(n)]


def _write_ours(prefix: str, docs: list[np.ndarray], dtype=np.int32, batch: int = 7) -> None:
    with IndexedShardWriter(prefix, dtype) as writer:
        for i in range(0, len(docs), batch):
            group = docs[i:i + batch]
            writer.add_documents(np.concatenate(group), [len(d) for d in group])


def _write_megatron(prefix: str, docs: list[np.ndarray], dtype=np.int32, sequences_per_doc: int = 1) -> None:
    """With sequences_per_doc > 1 each document is cut into that many sequences (Megatron's
    sentence-split layout), which our merge must carry over."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        parts = np.array_split(doc, sequences_per_doc) if len(doc) >= sequences_per_doc else [doc]
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(p) for p in parts])
    builder.finalize(prefix + ".idx")


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_bytes_identical_to_megatron_builder(tmp_path, dtype):
    docs = [d % 256 if dtype == np.uint8 else d for d in _docs(0, 100)]
    _write_ours(str(tmp_path / "ours"), docs, dtype)
    _write_megatron(str(tmp_path / "theirs"), docs, dtype)
    for ext in (".idx", ".bin"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes()
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert len(ds) == 100 and all(np.array_equal(ds[i], docs[i]) for i in range(100))
    assert read_index_counts(str(tmp_path / "ours")) == (100, sum(map(len, docs)))


def test_empty_dataset_matches_megatron(tmp_path):
    _write_ours(str(tmp_path / "ours"), [])
    _write_megatron(str(tmp_path / "theirs"), [])
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "theirs.idx").read_bytes()


def test_failure_leaves_no_final_files(tmp_path):
    prefix = str(tmp_path / "shard")
    with pytest.raises(RuntimeError):
        with IndexedShardWriter(prefix) as writer:
            writer.add_documents(np.arange(10, dtype=np.int32), [10])
            raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == []


def test_incomplete_shards_are_detected(tmp_path):
    prefix = str(tmp_path / "shard")
    assert not is_complete(prefix)
    _write_ours(prefix, _docs(1, 10))
    assert is_complete(prefix)
    with open(prefix + ".bin", "ab") as f:  # a .bin that does not match its .idx
        f.write(b"\0\0\0\0")
    assert not is_complete(prefix)
    with pytest.raises(ShardError, match="bytes, but shard.idx describes"):
        read_index_counts(prefix)
    os.remove(prefix + ".idx")
    assert not is_complete(prefix)


def test_merge_equals_concatenation(tmp_path):
    parts = [_docs(s, 20) for s in (2, 3, 4)]
    for i, docs in enumerate(parts):
        _write_ours(str(tmp_path / f"part{i}"), docs)
    merge_datasets([str(tmp_path / f"part{i}") for i in range(3)], str(tmp_path / "merged"))
    _write_megatron(str(tmp_path / "whole"), [d for docs in parts for d in docs])
    for ext in (".idx", ".bin"):
        assert (tmp_path / f"merged{ext}").read_bytes() == (tmp_path / f"whole{ext}").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_of_multi_sequence_documents_equals_megatron_add_index(tmp_path):
    # Megatron-LM shards may hold several sequences per document; the merge keeps that structure.
    for i, seed in enumerate((5, 6)):
        _write_megatron(str(tmp_path / f"part{i}"), _docs(seed, 15), sequences_per_doc=3)
    prefixes = [str(tmp_path / f"part{i}") for i in range(2)]
    merge_datasets(prefixes, str(tmp_path / "ours"))
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.int32)
    for prefix in prefixes:
        builder.add_index(prefix)
    builder.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".idx", ".bin"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes()
    assert len(IndexedDataset(str(tmp_path / "ours")).document_indices) == 31


def test_merge_refuses_mixed_dtypes(tmp_path):
    _write_ours(str(tmp_path / "a"), _docs(7, 3))
    _write_ours(str(tmp_path / "b"), [d % 256 for d in _docs(8, 3)], np.uint8)
    with pytest.raises(ShardError, match="different token dtypes"):
        merge_datasets([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    assert not list(tmp_path.glob("m*"))


# --- check_data_path: one line per problem, naming the file ---------------------------------------
@pytest.fixture
def good(tmp_path):
    prefix = str(tmp_path / "web_text_document")
    _write_ours(prefix, _docs(9, 12))
    return prefix


def _patch_header(prefix: str, offset: int, fmt: str, value) -> None:
    with open(prefix + ".idx", "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _check_fails(data_path: list[str], message: str, **kwargs) -> str:
    with pytest.raises(DataPathError) as err:
        check_data_path(data_path, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    return str(err.value)


def test_check_accepts_good_shards_weighted_or_not(good):
    check_data_path([good])
    check_data_path(["0.3", good, "0.7", good])
    check_data_path([f"1 {good}"])


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_check_missing_file(good, missing):
    os.remove(good + missing)
    _check_fails(["0.5", good, "0.5", good], f"--data-path {good}: {good}{missing} not found; create the dataset "
                                             "with tools/preprocess_data.py")


def test_check_prefix_given_with_suffix(good):
    _check_fails([good + ".bin"], f"{good}.bin.idx not found; create the dataset with tools/preprocess_data.py "
                                  "(pass its prefix, without .bin/.idx)")


@pytest.mark.parametrize("offset, fmt, value, message", [
    (0, "<9s", b"NOTMEGATR", "not a Megatron index (magic b'NOTMEGATR'"),
    (9, "<Q", 2, "index version 2, only version 1 exists"),
    (17, "<B", 42, "unknown token dtype code 42"),
    (18, "<Q", 10_000, "282 bytes, its header announces 120138"),  # more sequences than the file holds
])
def test_check_unreadable_header(good, offset, fmt, value, message):
    _patch_header(good, offset, fmt, value)
    assert _check_fails([good], f"--data-path {good}: {good}.idx: {message}").endswith(
        "; rerun tools/preprocess_data.py for it")


def test_check_truncated_index(good):
    with open(good + ".idx", "r+b") as f:
        f.truncate(20)
    _check_fails([good], f"{good}.idx: 20 bytes, shorter than an index header")


def test_check_empty_shard(tmp_path):
    empty = str(tmp_path / "empty")
    _write_ours(empty, [])
    _check_fails([empty], f"--data-path {empty} holds no documents (an empty shard")


def test_check_bin_size_disagrees_with_index(good):
    documents, tokens = read_index_counts(good)
    with open(good + ".bin", "r+b") as f:
        f.truncate(4 * tokens - 8)  # an interrupted copy
    _check_fails([good], f"{good}.bin: {4 * tokens - 8} bytes, but web_text_document.idx describes {4 * tokens}")


def test_check_loss_mask_companion(good):
    _check_fails([good], f"--data-path {good}: its SFT loss mask: {loss_mask_prefix(good)}.idx not found",
                 loss_masks=True)
    _write_ours(loss_mask_prefix(good), [np.ones(3, dtype=np.uint8)], np.uint8)
    _check_fails([good], f"{loss_mask_prefix(good)} has 1 documents and 3 tokens, the token dataset 12",
                 loss_masks=True)


def test_check_reads_the_whole_index_of_a_large_shard(tmp_path):
    """A shard of 1M documents: a length spoiled in the middle is found and named (the header-only counts do
    not see it); the chunked reading is exercised with a small chunk below."""
    prefix = str(tmp_path / "large")
    lengths = np.full(1_000_000, 3, dtype=np.int64)
    with IndexedShardWriter(prefix) as writer:
        writer.add_documents(np.zeros(3_000_000, dtype=np.int32), lengths)
    check_data_path([prefix])
    with open(prefix + ".idx", "r+b") as f:
        f.seek(34 + 4 * 500_000)
        f.write(b"\xff\xff\xff\xff")
    assert read_index_counts(prefix) == (1_000_000, 3_000_000)
    _check_fails([prefix], "sequence 500000 has length -1")


def test_whole_index_check_in_chunks_finds_the_first_bad_pointer(tmp_path, monkeypatch):
    from megatron_qwen.data import shards

    monkeypatch.setattr(shards, "INDEX_CHUNK", 7)
    prefix = str(tmp_path / "chunked")
    with IndexedShardWriter(prefix) as writer:
        writer.add_documents(np.arange(100, dtype=np.int32), np.full(20, 5))
    assert shards.check_index(prefix) == (20, 100)
    with open(prefix + ".idx", "r+b") as f:  # sequence 15's pointer, in the third chunk
        f.seek(34 + 4 * 20 + 8 * 15)
        f.write(np.int64(76).tobytes())
    with pytest.raises(shards.ShardError, match="sequence 15 points at byte 76 of the .bin, but the lengths before "
                                                "it add up to byte 300"):
        shards.check_index(prefix)


def test_check_imports_neither_megatron_core_nor_torch():
    code = ("import sys; from megatron_qwen.data import check_data_path; "
            "print(sorted(m for m in ('torch', 'megatron.core') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

