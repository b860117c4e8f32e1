"""Our fast shard writer against megatron-core's IndexedDatasetBuilder/IndexedDataset."""

import os

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_qwen.data.indexed_writer import IndexedShardWriter, is_complete, merge_datasets, read_index_counts


def _docs(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 151851, size=rng.integers(1, 300), dtype=np.int32) for _ in range(n)]


def _write_ours(prefix: str, docs: list[np.ndarray], dtype=np.int32, batch: int = 7) -> None:
    with IndexedShardWriter(prefix, dtype) as writer:
        for i in range(0, len(docs), batch):
            group = docs[i:i + batch]
            writer.add_documents(np.concatenate(group), [len(d) for d in group])


def _write_megatron(prefix: str, docs: list[np.ndarray], dtype=np.int32) -> None:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
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
    with pytest.raises(ValueError, match="size does not match"):
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
