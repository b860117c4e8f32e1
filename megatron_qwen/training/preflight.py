"""Every check that needs no process group, run before any work.

A wrong flag, a missing shard or a mistyped --load costs a second here instead of a cluster
allocation: each problem is one line naming the flag or file and what to do (exit code 2).
"""

import os
import tempfile

from megatron_qwen.checkpointing.deepspeed_format import check_resumable
from megatron_qwen.checkpointing.directory import (
    TRACKER,
    is_deepspeed_checkpoint,
    iteration_dir,
    loadable_iteration,
    written_by_deepspeed,
)
from megatron_qwen.checkpointing.parallel_layout import layout
from megatron_qwen.checkpointing.stored_config import check_same_model, saved_run_config
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import declared_outputs
from megatron_qwen.config.run import RunConfig
from megatron_qwen.data import check_data_path, check_split, parse_data_path
from megatron_qwen.data.blend import naming, token_id_outside
from megatron_qwen.data.shards import find_token_id_outside
from megatron_qwen.hf.source import is_hf_dir, open_hf
from megatron_qwen.platform.backends import FLASH_PRECISIONS
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.tokenizer.files import check_published


def check_run(cfg: RunConfig, world_size: int) -> None:
    """Raise ConfigError, DataPathError or TokenizerFileError for the first problem found."""
    cfg.validate(world_size)
    for name, path, kind in declared_outputs(cfg):
        check_writable(name, path, kind)
    check_backend(cfg)
    _check_data(cfg)
    _check_checkpoint_dirs(cfg)
    _check_zero(cfg, world_size)


def check_writable(name: str, path: str, kind: str) -> None:
    """The path a flag names (``kind`` "dir" or "file") can be written, else ConfigError naming the flag:
    a probe file is created and removed in it (a directory) or in its nearest existing parent, which the
    run would create the rest under. Nothing is left behind."""
    if kind == "file" and os.path.isdir(path):
        raise ConfigError(f"{name} {path} is a directory; pass a file path")
    if kind == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{name} {path} is a file; pass a directory")
    parent = os.path.abspath(path if kind == "dir" else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{name} {path}: {parent} is a file, not a directory; pass a path under a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
        if kind == "file" and os.path.exists(path):
            open(path, "ab").close()  # appending is what the run does to it
    except OSError as e:
        raise ConfigError(f"{name} {path}: cannot write there ({e.strerror or e}); pass a writable path") from None


def check_backend(cfg: RunConfig) -> None:
    """What the layer back end cannot do: flash-attn in fp32, and keeping packed SFT conversations apart when
    context parallelism splits the sequence (each back end's form of the boundaries, model/packing.py, holds
    whole samples: megatron-core's split would cut a THD row's segments, and only local and sdpa take masks,
    which context parallelism does not run)."""
    p = cfg.parallel
    if cfg.build.transformer_impl == "flash" and cfg.build.precision not in FLASH_PRECISIONS:
        raise ConfigError("--transformer-impl flash runs in bf16 only (flash-attn has no fp32 kernels): add --bf16, "
                          "or pass --transformer-impl sdpa for fp32")
    if cfg.data.data_format == "chatml" and cfg.data.pack_sft and p.context_parallel_size > 1:
        raise ConfigError(f"--transformer-impl {cfg.build.transformer_impl} cannot keep packed SFT conversations "
                          f"apart under --context-parallel-size {p.context_parallel_size} (a packed sample would be "
                          "split across ranks mid-conversation): pass --no-pack-sft, or --context-parallel-size 1")


def _check_zero(cfg: RunConfig, world_size: int) -> None:
    """The effective DeepSpeed config (a --deepspeed-config contradicting the flags is refused), and a
    deepspeed-engine checkpoint given to the megatron engine."""
    if cfg.zero.deepspeed:
        cfg.effective_deepspeed_config(world_size)  # refuses a --deepspeed-config contradicting the flags
        _check_deepspeed_resume(cfg, world_size)
    elif cfg.checkpoint.load and is_deepspeed_checkpoint(cfg.checkpoint.load):
        raise ConfigError(f"--load {cfg.checkpoint.load} holds a DeepSpeed-engine checkpoint: resume it with "
                          "--zero-engine deepspeed, or convert it with tools/convert_checkpoint.py --load-dir "
                          f"{cfg.checkpoint.load} --save-dir NEW_DIR and --load that")


def _check_deepspeed_resume(cfg: RunConfig, world_size: int) -> None:
    """A deepspeed-engine checkpoint resumed at a ZeRO stage or layout its universal checkpoint cannot reach."""
    # deferred: starting_point imports the model (megatron-core: seconds)
    from megatron_qwen.training.starting_point import effective_load

    s = effective_load(cfg.checkpoint)
    it, _ = loadable_iteration(s.load, s.load_fallback) if s.load and os.path.isdir(s.load) else (None, None)
    if it is not None and not s.finetune and written_by_deepspeed(iteration_dir(s.load, it)):
        planned = layout(cfg.parallel.tensor_model_parallel_size, 1, cfg.parallel.data_parallel_size(world_size))
        check_resumable(iteration_dir(s.load, it), cfg.zero.stage, planned)


def _check_data(cfg: RunConfig) -> None:
    if cfg.data.mock_data:
        return

    given = cfg.data.data_flags()  # --data-path, or --train/valid/test-data-path
    for name, paths in given.items():
        with naming(name):
            check_data_path(list(paths))
            _check_token_ids(cfg, list(paths))
    check_split(cfg.data.split)
    if cfg.data.tokenizer_type == "NullTokenizer":  # ids only: the check above is the whole contract
        return
    check_published(cfg.data.tokenizer_model, cfg.data.allow_unpublished_tokenizer)
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    if cfg.data.data_format == "pairs":
        # deferred: data.pairs imports megatron-core (seconds); only reward runs need it
        from megatron_qwen.data.pairs import check_pair_shard

        for name, paths in given.items():
            with naming(name):
                for prefix in parse_data_path(list(paths), check_files=False)[0]:
                    check_pair_shard(prefix, tokenizer.im_end_id)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} ids but --model-size {cfg.model_size} has a "
            f"vocabulary of {cfg.model.vocab_size}; use a Qwen-vocab preset or --vocab-size {tokenizer.vocab_size}")


def _check_token_ids(cfg: RunConfig, data_path: list[str]) -> None:
    """A shard tokenized for a larger vocabulary (or damaged) would index outside the embedding in the middle
    of training."""
    prefixes, _ = parse_data_path(data_path, check_files=False)
    for prefix in prefixes:
        found = find_token_id_outside(prefix, cfg.model.vocab_size)
        if found:
            raise token_id_outside(prefix, *found, cfg.model.vocab_size, f" (--model-size {cfg.model_size})")


def _check_head(ckpt_dir: str, cfg: RunConfig, weights_only: bool) -> None:
    """A reward model starts from a language model's weights (its head then starts fresh), never the other way
    round, and a resume continues the model that was saved."""
    saved = saved_run_config(ckpt_dir)[0]["build"].get("head", "lm")
    if saved == cfg.build.head or (weights_only and saved == "lm"):
        return
    if saved == "reward":
        raise ConfigError(f"--load {ckpt_dir} holds a reward model, which has no output layer: a "
                          f"{cfg.recipe} job cannot start from it; --load a language model")
    raise ConfigError(f"--load {ckpt_dir} holds a language model: a {cfg.recipe} job starts from its weights only "
                      "(--finetune), it cannot resume it")


def _check_checkpoint_dirs(cfg: RunConfig) -> None:
    s = cfg.checkpoint
    if not s.load:
        return
    if os.path.isfile(s.load):
        raise ConfigError(f"--load {s.load} is a file; pass the directory given to --save")
    # deferred: starting_point imports the model (megatron-core: seconds)
    from megatron_qwen.training.starting_point import effective_load

    start = effective_load(s)
    target = start.load  # a fine-tuning job that already saved resumes its own --save
    # A Hugging Face model directory is a valid --load once its weight files
    # match its config.json (every name and shape, from the file headers).
    if is_hf_dir(target):
        open_hf(target)
        return
    # The tracker's checkpoint, its files the sizes they were saved with (or --load-fallback's choice),
    # of the model this run builds: refused here, before any process group, rather than after.
    it, _ = loadable_iteration(target, s.load_fallback) if os.path.isdir(target) else (None, None)
    if it is not None:
        check_same_model(iteration_dir(target, it), cfg)
        _check_head(iteration_dir(target, it), cfg, weights_only=start.finetune)
        return
    # No checkpoint under --load. A job restarted with the same command (--load = --save) starts
    # from scratch the first time; anything else is a typo that would silently train from scratch.
    if s.save and os.path.abspath(s.save) == os.path.abspath(s.load) and not s.finetune:
        print(f" no checkpoint in {s.load} yet: starting from scratch", flush=True)
        return
    what = "does not exist" if not os.path.exists(s.load) else f"holds no checkpoint ({TRACKER} is missing)"
    raise ConfigError(f"--load {s.load} {what}; pass a directory written by --save, or drop --load "
                      "to train from scratch")
