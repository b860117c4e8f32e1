"""SFT datasets: padded and packed samples against hand-written expectations (a packed sample's boundaries
as the mask the local and sdpa back ends take, model/packing.py; the THD form: tests/test_packed_sft.py)."""

import numpy as np
import pytest
import torch
from conftest import write_sft_shards

from megatron_qwen.data import DataPathError, SFTDataset, build_sft_datasets
from megatron_qwen.data.shards import IndexedShardWriter
from megatron_qwen.model.packing import attention_mask

E = 151643
SEQ = 8
# Three conversations: ids and the stored target mask (1 = token is a training target).
DOCS = {
    "A": ([1, 2, 3, 4, 5], [1, 0, 0, 1, 1]),
    "B": ([10, 11, 12], [1, 1, 1]),
    "C": ([20, 21, 22, 23], [0, 0, 1, 1]),
}
# Hand-derived per-conversation pieces: tokens = ids[:-1], labels = ids[1:], loss = mask[1:].
PIECES = {
    "A": ([1, 2, 3, 4], [2, 3, 4, 5], [0, 0, 1, 1]),
    "B": ([10, 11], [11, 12], [1, 1]),
    "C": ([20, 21, 22], [21, 22, 23], [0, 1, 1]),
}
NAMES = {1: "A", 10: "B", 20: "C"}


class Tok:
    eod = E


@pytest.fixture
def abc(tmp_path):
    prefix = str(tmp_path / "sft_messages_document")
    write_sft_shards(prefix, list(DOCS.values()))
    return prefix


def _expected_mask(segment_lengths: list[int]) -> torch.Tensor:
    """Block-diagonal causal mask written out by loops; True = masked out."""
    masked = torch.ones(SEQ, SEQ, dtype=torch.bool)
    start = 0
    for n in segment_lengths:
        for i in range(start, start + n):
            for j in range(start, i + 1):
                masked[i, j] = False
        start += n
    return masked.unsqueeze(0)


def mask_of(sample: dict) -> torch.Tensor:
    """The attention mask the local and sdpa back ends get for this sample alone."""
    return attention_mask(sample["cu_seqlens"].unsqueeze(0))[0]


def test_padded_samples(abc):
    ds = SFTDataset(abc, 0, 3, SEQ, num_samples=3, seed=0, pack=False, eod=E)
    for i in range(3):
        sample = ds[i]
        name = NAMES[int(sample["tokens"][0])]
        tokens, labels, loss = PIECES[name]
        pad = SEQ - len(tokens)
        assert sample["tokens"].tolist() == tokens + [E] * pad
        assert sample["labels"].tolist() == labels + [E] * pad
        assert sample["loss_mask"].tolist() == loss + [0] * pad
        assert sample["position_ids"].tolist() == list(range(len(tokens))) + list(range(pad))
        assert sample["cu_seqlens"] is None  # one conversation, then padding: plain causal attention
    assert sorted(NAMES[int(ds[i]["tokens"][0])] for i in range(3)) == ["A", "B", "C"]  # one epoch, each once


def test_packed_samples_do_not_cross_conversations(abc):
    ds = SFTDataset(abc, 0, 3, SEQ, num_samples=4, seed=0, pack=True, eod=E)
    for i in range(4):
        sample = ds[i]
        names = [NAMES[int(d)] for d in (ds.tokens[doc][0] for doc in ds.samples[i])]
        tokens = [t for n in names for t in PIECES[n][0]]
        labels = [t for n in names for t in PIECES[n][1]]
        loss = [t for n in names for t in PIECES[n][2]]
        lengths = [len(PIECES[n][0]) for n in names]
        pad = SEQ - len(tokens)
        assert sum(lengths) <= SEQ
        assert sample["tokens"].tolist() == tokens + [E] * pad
        assert sample["labels"].tolist() == labels + [E] * pad  # each label is from its own conversation
        assert sample["loss_mask"].tolist() == loss + [0] * pad
        assert sample["position_ids"].tolist() == [p for n in lengths for p in range(n)] + list(range(pad))
        segments = lengths + ([pad] if pad else [])
        starts = [sum(segments[:k]) for k in range(len(segments) + 1)]
        assert sample["cu_seqlens"].tolist() == starts + [-1] * (SEQ + 1 - len(starts))
        assert torch.equal(mask_of(sample), _expected_mask(segments))
    # Fills: A=4, B=2, C=3 positions; greedy packing never leaves room for the next conversation.
    for i in range(3):
        used = sum(len(ds.tokens[d]) - 1 for d in ds.samples[i])
        nxt = len(ds.tokens[ds.samples[i + 1][0]]) - 1
        assert used + nxt > SEQ


def test_packed_example_written_out(tmp_path):
    # One fixed case in full: A (4 positions) then B (2 positions) packed, 2 padding positions.
    prefix = str(tmp_path / "ab")
    write_sft_shards(prefix, [DOCS["A"], DOCS["B"]])
    ds = SFTDataset(prefix, 0, 2, SEQ, num_samples=1, seed=0, pack=True, eod=E)
    order = [int(ds.tokens[d][0]) for d in ds.samples[0]]
    sample = ds[0]
    if order == [1, 10]:
        assert sample["tokens"].tolist() == [1, 2, 3, 4, 10, 11, E, E]
        assert sample["labels"].tolist() == [2, 3, 4, 5, 11, 12, E, E]
        assert sample["loss_mask"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
        assert sample["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]
    else:
        assert sample["tokens"].tolist() == [10, 11, 1, 2, 3, 4, E, E]
        assert sample["labels"].tolist() == [11, 12, 2, 3, 4, 5, E, E]
        assert sample["loss_mask"].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
        assert sample["position_ids"].tolist() == [0, 1, 0, 1, 2, 3, 0, 1]
    first = 4 if order == [1, 10] else 2
    m = mask_of(sample)[0]
    assert m[first, first - 1].item() and not m[first, first].item()  # no attention across the boundary


def test_long_conversation_is_truncated(tmp_path):
    prefix = str(tmp_path / "long")
    write_sft_shards(prefix, [(list(range(1, 21)), [1] * 20)])
    sample = SFTDataset(prefix, 0, 1, SEQ, num_samples=1, seed=0, pack=False, eod=E)[0]
    assert sample["tokens"].tolist() == list(range(1, 9)) and sample["labels"].tolist() == list(range(2, 10))


def test_build_splits_and_blend(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    write_sft_shards(one, [([1, 2, 3], [1, 1, 1])] * 50)
    write_sft_shards(two, [([7, 8, 9, 6], [1, 1, 1, 1])] * 50)
    train, valid, test = build_sft_datasets(["0.75", one, "0.25", two], "90,10,0", SEQ, 5, (2000, 40, 0), Tok(),
                                            pack=False)
    assert test is None and len(train) == 2000 and len(valid) == 40
    first_tokens = np.array([int(train[i]["tokens"][0]) for i in range(2000)])
    assert abs((first_tokens == 1).mean() - 0.75) < 0.01 and abs((first_tokens == 7).mean() - 0.25) < 0.01
    single, _, _ = build_sft_datasets([one], "100,0,0", SEQ, 5, (10, 0, 0), Tok(), pack=True)
    assert len(single) == 10 and single[0]["tokens"].tolist()[:4] == [1, 2, 1, 2]


def test_missing_loss_mask_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / "tokens_only")
    with IndexedShardWriter(prefix) as w:
        w.add_documents(np.array([1, 2, 3], dtype=np.int32), [3])
    message = f"--data-path {prefix}: its SFT loss mask: {prefix}_loss_mask.idx not found"
    with pytest.raises(DataPathError, match=message):
        build_sft_datasets([prefix], "1,0,0", SEQ, 0, (1, 0, 0), Tok(), pack=False)


def test_split_without_documents_is_none(tmp_path):
    prefix = str(tmp_path / "small")
    write_sft_shards(prefix, [([1, 2, 3], [1, 1, 1])] * 20)
    train, valid, test = build_sft_datasets([prefix], "969,30,1", SEQ, 0, (4, 2, 2), Tok(), pack=True)
    assert len(train) == 4 and len(valid) == 2 and test is None  # 0.1% of 20 documents is none
