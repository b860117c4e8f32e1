"""How --split and --data-path's weights divide datasets of whole items (SFT conversations, comparison pairs)
into the train, valid and test parts each split draws from. Pretraining datasets split themselves
(megatron-core's GPTDataset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)

from megatron_qwen.data.blend import check_split


@dataclass(frozen=True)
class Part:
    """Items [begin, end) of dataset ``index`` (``prefix``), drawn ``size`` times with blend weight ``weight``."""

    index: int
    prefix: str
    begin: int
    end: int
    weight: float
    size: int


def split_parts(prefixes: list[str], counts: list[int], weights: list[float] | None, split: str,
                num_samples: tuple[int, int, int]) -> list[list[Part] | None]:
    """Per split (train, valid, test): the parts it draws ``num_samples`` items from, or None for a split with
    weight 0, no samples or no items. Unweighted datasets weigh their item counts; a small dataset may give a
    small split nothing. A blend draws a little surplus from each part, as megatron-core does, since blending
    may take one item more."""
    split_matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(check_split(split)))
    if weights is None:
        weights = [float(n) for n in counts]
    weights = [w / sum(weights) for w in weights]
    out: list[list[Part] | None] = []
    for bounds, size in zip(split_matrix, num_samples):
        parts = []
        if bounds is not None and size:
            for i, (prefix, n) in enumerate(zip(prefixes, counts)):
                begin, end = int(round(bounds[0] * n)), int(round(bounds[1] * n))
                if end > begin:
                    parts.append((i, prefix, begin, end, weights[i]))
        total = sum(p[4] for p in parts)
        renormalized = [(i, prefix, begin, end, w / total) for i, prefix, begin, end, w in parts]
        out.append([Part(i, prefix, begin, end, w, size if len(parts) == 1 else int(np.ceil(w * size * 1.005)) + 1)
                    for i, prefix, begin, end, w in renormalized] or None)
    return out


def train_items(counts: list[int], split: str) -> int:
    """Items in the train split of datasets of ``counts`` items (what one epoch passes over)."""
    bounds = convert_split_vector_to_split_matrix(parse_and_normalize_split(check_split(split)))[0]
    if bounds is None:
        return 0
    return sum(int(round(bounds[1] * n)) - int(round(bounds[0] * n)) for n in counts)
