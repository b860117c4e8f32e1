"""Chat SFT on ChatML conversations (report section 3.1, docs/qwen.md section 4)."""

from megatron_qwen.config.recipes import SFT
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(SFT)
