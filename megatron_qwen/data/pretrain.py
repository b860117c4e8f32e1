"""Pretraining datasets: megatron-core's GPTDataset (or a blend of them) over our shards.

Documents are shuffled, concatenated (the shards carry the EOD between documents when written
with --append-eod) and cut into seq_length samples, by megatron-core itself; samples are its dicts
(tokens, labels, loss_mask, position_ids). Pretraining attention is plain causal, which the
attention kernels apply themselves, so no [s, s] mask is built per sample.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

from megatron_qwen.data.blend import DataPathError, check_split, parse_data_path, token_id_outside
from megatron_qwen.data.shards import read_index_counts

SPLIT_NAMES = ("train", "valid", "test")


@contextmanager
def _lone_process_is_rank_zero():
    """megatron-core 0.16.1's BlendedDataset calls torch.distributed.get_rank() on a cache miss
    without checking is_initialized() (GPTDataset does check); a lone process is rank 0."""
    if torch.distributed.is_initialized():
        yield
        return
    original = torch.distributed.get_rank
    torch.distributed.get_rank = lambda group=None: 0
    try:
        yield
    finally:
        torch.distributed.get_rank = original


class CheckedGPTDataset(GPTDataset):
    """megatron-core's GPTDataset that checks each sample's token ids against the vocabulary as it reads
    the sample (the start-up check reads whole only shards up to 16 MiB, data/shards.py): one vectorised max
    of the int64 ids seen as unsigned, where a negative id is above any vocabulary. An id outside it is one
    DataPathError naming the shard and the document."""

    def _query_document_sample_shuffle_indices(self, idx):
        text, document_ids = super()._query_document_sample_shuffle_indices(idx)
        vocab_size = self.config.tokenizer.vocab_size
        if text.view(np.uint64).max() >= vocab_size:  # or megatron-core's padding (-1) of a short last sample
            for document in document_ids:
                ids = self.dataset.get(int(document))
                bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
                if bad.size:
                    raise token_id_outside(self.dataset.path_prefix, int(document), int(ids[bad[0]]), vocab_size)
        return text, document_ids


def _drop_splits_without_documents(config: GPTDatasetConfig, prefixes: list[str], num_samples) -> None:
    """A split that gets no document would make megatron-core's GPTDataset loop forever looking
    for tokens; a split empty in every dataset becomes None, one empty in some datasets is an error."""
    doc_counts = [read_index_counts(p)[0] for p in prefixes]
    for i, bounds in enumerate(config.split_matrix):
        if bounds is None or not num_samples[i]:
            continue
        empty = [p for p, n in zip(prefixes, doc_counts) if round(bounds[0] * n) == round(bounds[1] * n)]
        if len(empty) == len(prefixes):
            config.split_matrix[i] = None
        elif empty:
            raise DataPathError(f"--split {config.split}: the {SPLIT_NAMES[i]} split gets no document of {empty[0]}; "
                                f"change --split or give that dataset more documents")


def build_pretrain_datasets(
    data_path: list[str] | None,
    split: str,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
    tokenizer,
    mock: bool = False,
    cache_path: str | None = None,
):
    """(train, valid, test); a split with weight 0 in `split` is None.

    `data_path` is Megatron's list (`web code` or `0.7 web 0.3 code`); `mock` uses megatron-core's
    MockGPTDataset and ignores `data_path`. Works with torch.distributed uninitialized or
    initialized (every rank builds; megatron-core lets rank 0 write the index cache first, then
    the other ranks read it after a barrier). `cache_path` is where those index files go
    (default: a `cache/` folder next to each dataset)."""
    if mock:
        blend, cls = None, MockGPTDataset
    else:
        if not data_path:
            raise ValueError("--data-path is required unless --mock-data is set")
        blend, cls = parse_data_path(data_path), CheckedGPTDataset
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=check_split(split) if not mock else None,
        path_to_cache=cache_path,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    if not mock:
        _drop_splits_without_documents(config, blend[0], num_samples)
    with warnings.catch_warnings(), _lone_process_is_rank_zero():
        # pad == eod (151643) by Qwen's design; megatron-core then rightly keeps EOD in the loss
        # and warns about the collision on every dataset it builds.
        warnings.filterwarnings("ignore", message="The pad token id in the tokenizer collides")
        train, valid, test = BlendedMegatronDatasetBuilder(cls, list(num_samples), lambda: True, config).build()
    return train, valid, test
