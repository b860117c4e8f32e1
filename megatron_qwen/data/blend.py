"""`--data-path` and `--split` as Megatron-LM reads them, and the shard check, with one-line errors.

    --data-path web code                  plain prefixes (weighted by their size)
    --data-path 0.7 web 0.2 code 0.1 books   WEIGHT PREFIX pairs (upsampling/downsampling)

Nothing here imports megatron-core or torch, so the training entry point checks its data in a
fraction of a second, before any process group exists.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from megatron_qwen.data.shards import ShardError, check_index, loss_mask_prefix


class DataPathError(ValueError):
    """A malformed --data-path/--split or an unusable shard; the message is one line naming the flag
    or file and the fix."""


@contextmanager
def naming(flag: str):
    """The errors below name --data-path: name ``flag``, the data flag that was given, instead."""
    try:
        yield
    except DataPathError as e:
        raise DataPathError(str(e).replace("--data-path", flag)) from None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_data_path(data_path: list[str], check_files: bool = True) -> tuple[list[str], list[float] | None]:
    """Return (prefixes, weights or None). Entries may also be one space-separated string.
    `check_files`: check every prefix's shard as check_data_path does."""
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
            check_shard(prefix)
    return prefixes, weights


def check_shard(prefix: str, loss_mask: bool = False) -> int:
    """The document count of the shard at `prefix`, or DataPathError when its .bin/.idx are missing,
    unreadable, disagree or hold nothing; with `loss_mask`, also its SFT loss-mask companion.
    Reads the .idx whole (shards.check_index), not the .bin."""
    try:
        documents, tokens = check_index(prefix)
    except ShardError as e:
        raise DataPathError(f"--data-path {prefix}: {e}") from None
    if tokens == 0:  # megatron-core cannot map an empty .bin
        raise DataPathError(f"--data-path {prefix} holds no documents (an empty shard, e.g. a byte range inside "
                            "one long line, or a file of bad records); leave it out of --data-path")
    if loss_mask:
        mask = loss_mask_prefix(prefix)
        try:
            mask_documents, mask_tokens = check_index(mask)
        except ShardError as e:
            raise DataPathError(f"--data-path {prefix}: its SFT loss mask: {e}") from None
        if (mask_documents, mask_tokens) != (documents, tokens):
            raise DataPathError(f"--data-path {prefix}: {mask} has {mask_documents} documents and {mask_tokens} "
                                f"tokens, the token dataset {documents} and {tokens}; rerun "
                                "tools/preprocess_data.py --chatml for both")
    return documents


def check_data_path(data_path: list[str], loss_masks: bool = False) -> None:
    """Check --data-path (WEIGHT PREFIX pairs or prefixes, as parse_data_path) and every shard it names
    (check_shard; `loss_masks`: SFT shards, with their loss-mask companions); DataPathError (one
    line) on the first problem. Index reads only, no process group: fast on any shard size."""
    prefixes, _ = parse_data_path(data_path, check_files=False)
    for prefix in prefixes:
        check_shard(prefix, loss_mask=loss_masks)


def token_id_outside(prefix: str, document: int, token_id: int, vocab_size: int, model: str = "") -> DataPathError:
    """The one line for a token id the model has no embedding row for (training/preflight.py, data/pretrain.py)."""
    return DataPathError(f"--data-path {prefix}: document {document} holds token id {token_id}, outside the model's "
                         f"vocabulary of {vocab_size}{model}; preprocess it with the model's tokenizer, or pick a "
                         "model with that vocabulary")


def check_split(split: str) -> str:
    """`--split 969,30,1`: up to three non-negative numbers, not all zero."""
    parts = [p for p in re.split(r"[,/]", split.strip()) if p.strip()]
    values = [_number(p) for p in parts]
    if not 1 <= len(parts) <= 3 or any(v is None or v < 0 for v in values) or sum(values) <= 0:
        raise DataPathError(f"--split {split!r}: expected up to 3 non-negative weights like 969,30,1")
    return ",".join(parts)
