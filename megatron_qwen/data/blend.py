"""`--data-path` and `--split` as Megatron-LM reads them, with one-line errors.

    --data-path web code                  plain prefixes (weighted by their size)
    --data-path 0.7 web 0.2 code 0.1 books   WEIGHT PREFIX pairs (upsampling/downsampling)
"""

from __future__ import annotations

import re

from megatron_qwen.data.indexed_writer import read_index_counts


class DataPathError(ValueError):
    """A malformed --data-path/--split; the message is one line naming the flag and the fix."""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_data_path(data_path: list[str], check_files: bool = True) -> tuple[list[str], list[float] | None]:
    """Return (prefixes, weights or None). Entries may also be one space-separated string."""
    items = [token for entry in data_path for token in entry.split()]
    if not items:
        raise DataPathError("--data-path is empty; give dataset prefixes, optionally as WEIGHT PREFIX pairs")
    if _number(items[0]) is None:
        prefixes, weights = items, None
    else:
        if len(items) % 2:
            raise DataPathError(
                f"--data-path has {len(items)} entries, an odd count; weighted form is WEIGHT PREFIX pairs"
            )
        weights, prefixes = [], []
        for i in range(0, len(items), 2):
            weight = _number(items[i])
            if weight is None:
                raise DataPathError(
                    f"--data-path entry {i + 1} ({items[i]!r}) is not a number; weighted form is WEIGHT PREFIX pairs"
                )
            if weight < 0:
                raise DataPathError(f"--data-path weight {items[i]} for {items[i + 1]} is negative")
            weights.append(weight)
            prefixes.append(items[i + 1])
        if sum(weights) <= 0:
            raise DataPathError("--data-path weights sum to 0")
    if check_files:
        for prefix in prefixes:
            try:
                documents, _ = read_index_counts(prefix)
            except ValueError as e:
                raise DataPathError(f"--data-path {prefix}: {e}; create it with tools/preprocess_data.py") from None
            if documents == 0:  # megatron-core cannot map an empty .bin
                raise DataPathError(f"--data-path {prefix} holds no documents (an empty shard); leave it out")
    return prefixes, weights


def check_split(split: str) -> str:
    """`--split 969,30,1`: up to three non-negative numbers, not all zero."""
    parts = [p for p in re.split(r"[,/]", split.strip()) if p.strip()]
    values = [_number(p) for p in parts]
    if not 1 <= len(parts) <= 3 or any(v is None or v < 0 for v in values) or sum(values) <= 0:
        raise DataPathError(f"--split {split!r}: expected up to 3 non-negative weights like 969,30,1")
    return ",".join(parts)
