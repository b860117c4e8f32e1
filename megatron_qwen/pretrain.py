"""Qwen base pretraining from scratch (report section 2, Table 1; docs/qwen.md section 3)."""

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(PRETRAIN)
