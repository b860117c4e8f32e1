"""Data: raw corpora -> indexed shards (preprocess), and the training datasets over them."""

from megatron_qwen.data.blend import DataPathError, parse_data_path
from megatron_qwen.data.pretrain import build_pretrain_datasets
from megatron_qwen.data.sft import SFTDataset, build_sft_datasets

__all__ = ["build_pretrain_datasets", "build_sft_datasets", "SFTDataset", "parse_data_path", "DataPathError"]
