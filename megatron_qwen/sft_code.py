"""Code-Qwen-Chat: multi-stage SFT from Code-Qwen (report section 4.2, docs/qwen.md section 5)."""

from megatron_qwen.config.recipes import SFT_CODE
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(SFT_CODE)
