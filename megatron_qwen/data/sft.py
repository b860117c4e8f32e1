"""SFT datasets over ChatML shards (tokens + `_loss_mask` companion, written by --chatml).

A sample is a dict like megatron-core's GPT samples: tokens, labels, loss_mask, position_ids, and
cu_seqlens, where its conversations begin and end (model/packing.py; None for a padded sample). Within a
conversation of n tokens, tokens = ids[:-1], labels = ids[1:], loss_mask = stored mask[1:] (the stored
mask marks training targets). Conversations longer than seq_length + 1 tokens are truncated.

- padded (pack=False): one conversation per sample, the rest filled with EOD at loss mask 0; plain
  causal attention, no mask.
- packed (pack=True): consecutive conversations (in shuffled order) fill a sample while they
  fit; cu_seqlens delimits them (and the padding at the end, its own segment), so attention never
  crosses a boundary: the training step turns it into the form the back end takes (a block-diagonal
  mask, or megatron-core's PackedSeqParams). position_ids restart at 0 for each conversation, and no
  label crosses from one conversation into the next.
Every rank builds the same datasets deterministically from the seed; no files are written.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_qwen.data.blend import DataPathError, check_data_path, parse_data_path
from megatron_qwen.data.shards import LOSS_MASK_SUFFIX, loss_mask_prefix, read_index_counts
from megatron_qwen.data.splits import split_parts
from megatron_qwen.model.packing import describe_segments


class SFTDataset(torch.utils.data.Dataset):
    """`num_samples` samples from documents [begin, end) of one SFT dataset, reshuffled each epoch."""

    def __init__(self, prefix: str, begin: int, end: int, seq_length: int, num_samples: int, seed: int,
                 pack: bool, eod: int):
        self.tokens = IndexedDataset(prefix)
        self.masks = IndexedDataset(loss_mask_prefix(prefix))
        if not np.array_equal(self.tokens.sequence_lengths, self.masks.sequence_lengths):
            raise DataPathError(f"{prefix}: tokens and {LOSS_MASK_SUFFIX} datasets have different documents")
        if end <= begin:
            raise DataPathError(f"{prefix}: the split gives this dataset no documents")
        self.seq_length, self.pack, self.eod = seq_length, pack, eod
        # Each conversation of n tokens fills n - 1 input positions (at most seq_length).
        fill = np.minimum(self.tokens.sequence_lengths.astype(np.int64), seq_length + 1) - 1
        if not (fill[begin:end] > 0).any():
            raise DataPathError(f"{prefix}: every document in this split has a single token; nothing to train on")
        rng = np.random.default_rng(seed)
        samples: list[np.ndarray] = []  # each: the document ids of one sample
        order: deque = deque()
        while len(samples) < num_samples:
            docs, used = [], 0
            while True:
                if not order:  # next epoch, reshuffled; packing runs on across the boundary
                    order.extend(rng.permutation(np.arange(begin, end)).tolist())
                doc = order[0]
                if docs and (not pack or used + fill[doc] > seq_length):
                    break
                order.popleft()
                if pack and fill[doc] <= 0:
                    continue  # a one-token conversation predicts nothing
                docs.append(doc)
                used += fill[doc]
            samples.append(np.array(docs))
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self.sample(self.samples[idx])

    def sample(self, docs) -> dict[str, torch.Tensor]:
        """The sample holding documents ``docs`` in this order (``samples[i]`` for sample i)."""
        s = self.seq_length
        tokens = np.full(s, self.eod, dtype=np.int64)
        labels = np.full(s, self.eod, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.zeros(s, dtype=np.int64)
        lengths = []
        start = 0
        for doc in docs:
            ids = self.tokens[doc][: s + 1]
            mask = self.masks[doc][: s + 1]
            n = len(ids) - 1
            tokens[start:start + n] = ids[:-1]
            labels[start:start + n] = ids[1:]
            loss_mask[start:start + n] = mask[1:]
            position_ids[start:start + n] = np.arange(n)
            lengths.append(n)
            start += n
        position_ids[start:] = np.arange(s - start)
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids),
            "cu_seqlens": describe_segments(lengths, s) if self.pack else None,
        }


class BlendedSFTDataset(torch.utils.data.Dataset):
    """`size` samples drawn from several datasets in proportion to `weights` (megatron-core's
    error-minimizing blending index, as in its BlendedDataset)."""

    def __init__(self, datasets: list[SFTDataset], weights: list[float], size: int):
        self.datasets = datasets
        self.dataset_index = np.zeros(size, dtype=np.int16)
        self.dataset_sample_index = np.zeros(size, dtype=np.int64)
        helpers.build_blending_indices(self.dataset_index, self.dataset_sample_index,
                                       np.asarray(weights, dtype=np.float64), len(datasets), size, False)

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self.datasets[self.dataset_index[idx]][self.dataset_sample_index[idx]]


def build_sft_datasets(data_path: list[str], split: str, seq_length: int, seed: int,
                       num_samples: tuple[int, int, int], tokenizer, pack: bool):
    """(train, valid, test) over SFT shards; a split with weight 0, 0 samples or no documents is None.

    `data_path` is like --data-path for pretraining (prefixes of the token datasets, optionally
    as WEIGHT PREFIX pairs; unweighted prefixes are weighted by their document counts)."""
    check_data_path(data_path, loss_masks=True)
    prefixes, weights = parse_data_path(data_path, check_files=False)
    doc_counts = [read_index_counts(p)[0] for p in prefixes]
    out = []
    for split_index, parts in enumerate(split_parts(prefixes, doc_counts, weights, split, num_samples)):
        if parts is None:
            out.append(None)
            continue
        split_seed = seed + 1000 * split_index
        datasets = [SFTDataset(p.prefix, p.begin, p.end, seq_length, p.size, split_seed + p.index, pack, tokenizer.eod)
                    for p in parts]
        out.append(datasets[0] if len(datasets) == 1 else
                   BlendedSFTDataset(datasets, [p.weight for p in parts], num_samples[split_index]))
    return tuple(out)
