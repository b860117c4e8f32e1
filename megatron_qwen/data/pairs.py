"""Comparison pairs for the reward model: their shards, and the datasets the reward recipe trains on.

A pair shard (tools/preprocess_data.py --pairs) is one dataset, ``PREFIX_pairs_document``, whose sequences
alternate: sequence 2i is pair i's preferred conversation and 2i+1 the other one, each the ids of
tokenizer/chatml.py's encode_reward_sequence, so each ends with the end token, the response's <|im_end|>.

A dataset item is one sequence: item j is side j % 2 (0: chosen) of the dataset's pair j // 2. Micro-batches
hold an even number of consecutive items (config/run.py), so the two responses of a pair always share a
micro-batch, chosen first. Pairs are shuffled, blended and split as wholes. A sample is the sequence padded
on the right to seq_length with <|endoftext|> (causal attention: padding after the end token changes nothing
before it), with ``end_index``, the end token's position. A sequence longer than seq_length keeps its last
seq_length tokens: the prompt is cut from the left, and the end token is never cut.
"""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_qwen.data.blend import DataPathError, check_data_path, parse_data_path, token_id_outside
from megatron_qwen.data.sft import BlendedSFTDataset
from megatron_qwen.data.shards import read_index_counts, sequence_lengths, token_dtype
from megatron_qwen.data.splits import split_parts, train_items


def check_pair_shard(prefix: str, end_id: int) -> int:
    """The pair count of the pair shard at ``prefix``; DataPathError (one line) when it cannot be one: an odd
    number of sequences, or a sequence that does not end with the end token."""
    sequences, _ = read_index_counts(prefix)
    if sequences % 2:
        raise DataPathError(f"--data-path {prefix}: {sequences} sequences, an odd count; a pair shard holds each "
                            "pair's two responses (tools/preprocess_data.py --pairs)")
    lengths = sequence_lengths(prefix)
    tokens = np.memmap(prefix + ".bin", dtype=token_dtype(prefix), mode="r")
    last = tokens[np.cumsum(lengths, dtype=np.int64) - 1]
    wrong = np.flatnonzero((last != end_id) | (lengths == 0))
    if wrong.size:
        raise DataPathError(f"--data-path {prefix}: sequence {int(wrong[0])} does not end with the end token (id "
                            f"{end_id}); not a pair shard: write it with tools/preprocess_data.py --pairs")
    return sequences // 2


def training_pairs(data_path: list[str], split: str) -> int:
    """Pairs in the train split of --data-path (what one epoch passes over; header reads only)."""
    prefixes, _ = parse_data_path(data_path)
    return train_items([read_index_counts(p)[0] // 2 for p in prefixes], split)


def truncation_note(prefix: str, seq_length: int) -> str | None:
    """One line on the sequences of ``prefix`` longer than seq_length and how they are cut, or None."""
    lengths = sequence_lengths(prefix)
    longer = int((lengths > seq_length).sum())
    if not longer:
        return None
    return (f"--data-path {prefix}: {longer} of {len(lengths)} sequences are longer than --seq-length {seq_length} "
            f"(the longest {int(lengths.max())} tokens): each keeps its last {seq_length}, the prompt cut from the "
            "left, the end token kept")


def reward_sample(ids: np.ndarray, seq_length: int, pad_id: int) -> dict:
    """One sequence as the reward model reads it: the last seq_length ids, right-padded, and the end token's
    position. The evaluation (evaluation/reward.py) cuts sequences the same way."""
    ids = ids[-seq_length:]
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    tokens[:len(ids)] = ids
    return {"tokens": tokens, "position_ids": np.arange(seq_length, dtype=np.int64),
            "end_index": np.int64(len(ids) - 1)}


class PairDataset:
    """``2 * num_pairs`` items (module docstring) from pairs [begin, end) of one pair shard, reshuffled each
    epoch. Each sequence's token ids are checked against the vocabulary as it is read, as pretraining's
    samples are (data/pretrain.py; the start-up check reads whole only shards up to 16 MiB): an id outside it
    is one DataPathError naming the shard and the document (the sequence)."""

    def __init__(self, prefix: str, begin: int, end: int, seq_length: int, num_pairs: int, seed: int, pad_id: int,
                 vocab_size: int):
        self.sequences = IndexedDataset(prefix)
        self.prefix, self.seq_length, self.pad_id, self.vocab_size = prefix, seq_length, pad_id, vocab_size
        rng = np.random.default_rng(seed)
        epochs = -(-num_pairs // (end - begin))
        self.pairs = np.concatenate([rng.permutation(np.arange(begin, end)) for _ in range(epochs)])[:num_pairs]

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, item: int) -> dict:
        sequence = 2 * int(self.pairs[item // 2]) + item % 2
        ids = self.sequences[sequence]
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(np.flatnonzero((ids < 0) | (ids >= self.vocab_size))[0])
            raise token_id_outside(self.prefix, sequence, int(ids[bad]), self.vocab_size)
        return reward_sample(ids, self.seq_length, self.pad_id)


def build_pair_datasets(data_path: list[str], split: str, seq_length: int, seed: int,
                        num_samples: tuple[int, int, int], tokenizer, report=print):
    """(train, valid, test) over pair shards (sizes in sequences, two per pair); a split with weight 0, no
    samples or no pairs is None. ``report`` gets the one-line truncation notes."""
    check_data_path(data_path)
    prefixes, weights = parse_data_path(data_path, check_files=False)
    counts = [check_pair_shard(p, tokenizer.im_end_id) for p in prefixes]
    for note in filter(None, (truncation_note(p, seq_length) for p in prefixes)):
        report(note)
    out = []
    pair_samples = tuple(n // 2 for n in num_samples)
    for split_index, parts in enumerate(split_parts(prefixes, counts, weights, split, pair_samples)):
        if parts is None:
            out.append(None)
            continue
        datasets = [PairDataset(p.prefix, p.begin, p.end, seq_length, p.size, seed + 1000 * split_index + p.index,
                                tokenizer.eod, tokenizer.vocab_size) for p in parts]
        out.append(datasets[0] if len(datasets) == 1 else
                   BlendedPairs(BlendedSFTDataset(datasets, [p.weight for p in parts], pair_samples[split_index])))
    return tuple(out)


class BlendedPairs:
    """Items of several PairDatasets, blended pair by pair (``blend``: megatron-core's blending index over the
    datasets' pairs)."""

    def __init__(self, blend):
        self.blend = blend

    def __len__(self) -> int:
        return 2 * len(self.blend)

    def __getitem__(self, item: int) -> dict:
        pair = item // 2
        dataset = self.blend.datasets[self.blend.dataset_index[pair]]
        return dataset[2 * int(self.blend.dataset_sample_index[pair]) + item % 2]
