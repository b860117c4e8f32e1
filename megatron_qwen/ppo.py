"""PPO from an SFT policy and a reward model: policy, value, reference and reward models, with the report's
settings (report section 3.2.2, docs/qwen.md section 12; docs/ppo.md)."""

from megatron_qwen.config.recipes import PPO
from megatron_qwen.training.entry import main

if __name__ == "__main__":
    main(PPO)
