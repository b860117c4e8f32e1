"""PPO's checks before any process group or model (training/preflight.py runs them for the PPO job): the prompt
set (readable, not empty, every prompt leaving room for its response), and a reward model that reads the
policy's tokens: a reward checkpoint of ours, of the same vocabulary and tokenizer, whose shape the run's layout
can split. Each problem is one line naming the flag or file."""

import os

from megatron_qwen.checkpointing.integrity import loadable_iteration
from megatron_qwen.checkpointing.resolver import resolve
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.run import RunConfig
from megatron_qwen.data.prompts import read_prompts
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.tokenizer.files import read_tokenizer_file, sha256_hex


def check_ppo(cfg: RunConfig, world_size: int) -> None:
    check_reward_model(cfg, world_size)
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but --model-size {cfg.model_size} has a "
                          f"vocabulary of {cfg.model.vocab_size}; use a Qwen-vocab preset or --load a Qwen model")
    read_prompts(cfg.ppo.prompt_data_path, tokenizer, cfg.train.seq_length, cfg.ppo.max_new_tokens)


def reward_model_config(path: str) -> RunConfig:
    """The run configuration of the reward model under --reward-model (its latest loadable checkpoint)."""
    if not os.path.isdir(path):
        raise ConfigError(f"--reward-model {path} does not exist; pass the --save directory of a reward run")
    iteration, _ = loadable_iteration(path, fallback=False)
    if iteration is None:
        raise ConfigError(f"--reward-model {path} holds no checkpoint; pass the --save directory of a reward run")
    saved = RunConfig.from_dict(resolve(path).at(iteration).stored_config[0])
    if saved.build.head != "reward":
        raise ConfigError(f"--reward-model {path} holds a language model, not a reward model; train one with "
                          "python -m megatron_qwen.reward")
    return saved


def check_reward_model(cfg: RunConfig, world_size: int) -> None:
    path = cfg.ppo.reward_model
    reward = reward_model_config(path)
    if (reward.model.vocab_size, reward.model.padded_vocab_size) != (cfg.model.vocab_size,
                                                                     cfg.model.padded_vocab_size):
        raise ConfigError(f"--reward-model {path} has a vocabulary of {reward.model.vocab_size} ids "
                          f"({reward.model.padded_vocab_size} rows), the policy {cfg.model.vocab_size} "
                          f"({cfg.model.padded_vocab_size}): it would read the policy's ids as other tokens; pass a "
                          "reward model trained on the policy's vocabulary")
    def named(data) -> str:
        return f"{data.tokenizer_type} {data.tokenizer_model or 'qwen.tiktoken, the fetched copy'}"

    if reward.data.tokenizer_type != cfg.data.tokenizer_type or (
            sha256_hex(read_tokenizer_file(reward.data.tokenizer_model)[0])
            != sha256_hex(read_tokenizer_file(cfg.data.tokenizer_model)[0])):
        raise ConfigError(f"--reward-model {path} was trained with another tokenizer ({named(reward.data)}) than "
                          f"this run's ({named(cfg.data)}); pass the same --tokenizer-model to both")
    m = reward.model
    try:
        cfg.parallel.validate(world_size, m.num_layers, m.num_attention_heads, m.padded_vocab_size)
    except ConfigError as e:
        raise ConfigError(f"--reward-model {path}: the value and reward models cannot take this layout: {e}") from None
