"""Data: raw corpora -> indexed shards (preprocess), and the training datasets over them.

The dataset builders load lazily (they import megatron-core and torch): `check_data_path` and
`parse_data_path` stay cheap to import for the checks that run before any work.
"""

import importlib

from megatron_qwen.data.blend import DataPathError, check_data_path, check_split, parse_data_path

_LAZY = {
    "build_pretrain_datasets": "megatron_qwen.data.pretrain",
    "build_sft_datasets": "megatron_qwen.data.sft",
    "SFTDataset": "megatron_qwen.data.sft",
    "build_pair_datasets": "megatron_qwen.data.pairs",
}

__all__ = ["build_pretrain_datasets", "build_sft_datasets", "SFTDataset", "build_pair_datasets", "parse_data_path",
           "check_data_path", "check_split", "DataPathError"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
