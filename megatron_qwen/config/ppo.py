"""PPO's settings (python -m megatron_qwen.ppo only), each field with its flag; the defaults are the report's
(section 3.2.2, docs/qwen.md section 12) and, where it is silent, the sources docs/ppo.md names. The policy's LR
is the recipe's --lr (config/recipes.py: PPO); the batch is --global-batch-size responses per iteration."""

from dataclasses import dataclass

from megatron_qwen.config.flags import NON_NEGATIVE, POSITIVE, PPO, PROBABILITY, Bounds, flag

OPEN_PROBABILITY = Bounds(low=0, high=1, low_open=True)  # (0, 1]


@dataclass(frozen=True)
class PPOSettings:
    prompt_data_path: str | None = flag(
        "--prompt-data-path", group=PPO, default=None,
        help='JSONL of prompts, one {"messages": [...]} per line ending with a user turn (ChatML, docs/ppo.md)')
    reward_model: str | None = flag("--reward-model", group=PPO, default=None,
                                    help="the reward model's --save directory; the value model starts from it too")
    samples_per_prompt: int = flag("--samples-per-prompt", group=PPO, default=2, bounds=POSITIVE,
                                   help="responses sampled for each prompt (report: two)")
    max_new_tokens: int = flag("--max-new-tokens", group=PPO, default=512, bounds=POSITIVE,
                               help="longest response; a prompt plus this must fit --seq-length")
    top_p: float = flag("--top-p", group=PPO, default=0.9, bounds=OPEN_PROBABILITY, help="rollout nucleus sampling")
    temperature: float = flag("--temperature", group=PPO, default=1.0, bounds=POSITIVE)
    kl_coef: float = flag("--kl-coef", group=PPO, default=0.04, bounds=NON_NEGATIVE,
                          help="per-token KL penalty to the reference, in the reward")
    value_lr: float = flag("--value-lr", group=PPO, default=5e-6, bounds=NON_NEGATIVE,
                           help="the value model's constant LR (the policy's: --lr)")
    value_clip: float = flag("--value-clip", group=PPO, default=0.15, bounds=POSITIVE,
                             help="the value loss's clip range around the rollout's values")
    policy_clip: float = flag("--policy-clip", group=PPO, default=0.2, bounds=POSITIVE,
                              help="PPO's epsilon: the probability ratio's clip range")
    gamma: float = flag("--gae-gamma", group=PPO, default=1.0, bounds=PROBABILITY, help="GAE's discount")
    lam: float = flag("--gae-lambda", group=PPO, default=0.95, bounds=PROBABILITY, help="GAE's lambda")
    value_warmup_iters: int = flag("--value-warmup-iters", group=PPO, default=50, bounds=NON_NEGATIVE,
                                   help="first iterations that update the value model only")
    ppo_epochs: int = flag("--ppo-epochs", group=PPO, default=1, bounds=POSITIVE,
                           help="optimizer steps of each model on each rollout batch")
    ptx_coef: float = flag("--ptx-coef", group=PPO, default=0.0, bounds=NON_NEGATIVE, needs=("--data-path",),
                           help="weight of the pretraining loss on --data-path's shards added to the policy's (0: off)")
