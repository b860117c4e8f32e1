"""Every check that needs no process group, run before any work.

A wrong flag, a missing shard or a mistyped --load costs a second here instead of a cluster
allocation: each problem is one line naming the flag or file and what to do (exit code 2).
"""

import os

from megatron_qwen.config.arguments import RunConfig
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.training.checkpoint_dirs import TRACKER, iteration_dir, latest_iteration


def check_run(cfg: RunConfig, world_size: int) -> None:
    """Raise ConfigError, DataPathError or TokenizerFileError for the first problem found."""
    cfg.validate(world_size)
    _check_data(cfg)
    _check_checkpoint_dirs(cfg)


def _check_data(cfg: RunConfig) -> None:
    if cfg.data.mock_data:
        return
    from megatron_qwen.data import check_data_path, check_split
    from megatron_qwen.tokenizer import load_tokenizer

    check_data_path(list(cfg.data.data_path))
    check_split(cfg.data.split)
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} ids but --model-size {cfg.model_size} has a "
            f"vocabulary of {cfg.model.vocab_size}; use a Qwen-vocab preset or --vocab-size {tokenizer.vocab_size}")


def _check_checkpoint_dirs(cfg: RunConfig) -> None:
    s = cfg.checkpoint
    if s.save and os.path.isfile(s.save):
        raise ConfigError(f"--save {s.save} is a file; pass a directory")
    if not s.load:
        return
    if os.path.isfile(s.load):
        raise ConfigError(f"--load {s.load} is a file; pass the directory given to --save")
    # A Hugging Face model directory is a valid --load once its weight files
    # match its config.json (every name and shape, from the file headers).
    from megatron_qwen.hf.source import is_hf_dir, open_hf

    if is_hf_dir(s.load):
        open_hf(s.load)
        return
    it = latest_iteration(s.load) if os.path.isdir(s.load) else None
    if it is not None:
        if not os.path.isdir(iteration_dir(s.load, it)):
            raise ConfigError(f"--load {s.load}: {TRACKER} names iteration {it} but "
                              f"{iteration_dir(s.load, it)} is missing")
        return
    # No checkpoint under --load. A job restarted with the same command (--load = --save) starts
    # from scratch the first time; anything else is a typo that would silently train from scratch.
    own_save = s.save and os.path.abspath(s.save) == os.path.abspath(s.load)
    if own_save and not s.finetune:
        print(f" no checkpoint in {s.load} yet: starting from scratch", flush=True)
        return
    if s.finetune and s.save and latest_iteration(s.save) is not None:
        return  # a fine-tuning job resumes its own --save (training/checkpoint.py)
    what = "does not exist" if not os.path.exists(s.load) else f"holds no checkpoint ({TRACKER} is missing)"
    raise ConfigError(f"--load {s.load} {what}; pass a directory written by --save, or drop --load "
                      "to train from scratch")
