"""The reward model on comparison pairs: preference-model pretraining from a language model, then fine-tuning
from the PMP checkpoint (report section 3.2.1, docs/qwen.md section 11)."""

from megatron_qwen.config.recipes import REWARD
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(REWARD)
