"""Code-Qwen continued pretraining from a base checkpoint (report section 4.1, docs/qwen.md section 5)."""

from megatron_qwen.config.recipes import PRETRAIN_CODE
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(PRETRAIN_CODE)
