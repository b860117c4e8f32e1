"""Math-Qwen SFT on math instructions (report section 5.1, docs/qwen.md section 6)."""

from megatron_qwen.config.recipes import SFT_MATH
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(SFT_MATH)
