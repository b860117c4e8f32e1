"""Every check that needs no process group, run before any work.

A wrong flag, a missing shard or a mistyped --load costs a second here instead of a cluster
allocation: each problem is one line naming the flag or file and what to do (exit code 2).
"""

import os
import tempfile

from megatron_qwen.checkpointing.deepspeed_format import check_resumable
from megatron_qwen.checkpointing.integrity import loadable_iteration
from megatron_qwen.checkpointing.parallel_layout import layout
from megatron_qwen.checkpointing.reading import check_reshardable, common_state
from megatron_qwen.checkpointing.resolver import HF_KINDS, NOT_A_DIRECTORY, Kind, Resolved, Start, starting_point
from megatron_qwen.checkpointing.stored_config import check_same_model
from megatron_qwen.checkpointing.unpickling import check_pickles
from megatron_qwen.checkpointing.writer_lock import lock_directory
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import declared_outputs
from megatron_qwen.config.run import RunConfig
from megatron_qwen.data import check_data_path, check_split, parse_data_path
from megatron_qwen.data.blend import naming, token_id_outside
from megatron_qwen.data.shards import find_token_id_outside
from megatron_qwen.hf.source import open_hf
from megatron_qwen.platform.backends import FLASH_PRECISIONS
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.tokenizer.files import check_published
from megatron_qwen.training.ppo_preflight import check_ppo


def check_run(cfg: RunConfig, world_size: int) -> None:
    """Raise ConfigError, DataPathError or TokenizerFileError for the first problem found; then make this
    job (its rank 0) the one writer of --save (checkpointing/writer_lock.py), held until it ends."""
    cfg.validate(world_size)
    for name, path, kind in declared_outputs(cfg):
        check_writable(name, path, kind)
    check_backend(cfg)
    _check_data(cfg)
    _check_checkpoint_dirs(cfg, world_size)
    _check_zero(cfg, world_size)
    if cfg.data.data_format == "prompts":
        check_ppo(cfg, world_size)
    if cfg.checkpoint.save and int(os.environ.get("RANK", "0")) == 0:
        lock_directory(cfg.checkpoint.save)


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
    """The effective DeepSpeed config: a --deepspeed-config contradicting the flags is refused."""
    if cfg.zero.deepspeed:
        cfg.effective_deepspeed_config(world_size)


def _check_resumable(source: Resolved, cfg: RunConfig, start: Start, world_size: int) -> None:
    """The checkpoint a run loads (``source``, at the iteration it loads) holds data only, the model this run
    builds (its head too), and (resumed) optimizer state this run's layout and ZeRO stage can take."""

    deepspeed = source.kind is Kind.DEEPSPEED
    check_pickles(source.ckpt_dir, deepspeed=deepspeed)
    check_same_model(source.ckpt_dir, source.stored_config, cfg)
    _check_head(source, cfg, weights_only=start.settings.finetune)
    if not start.resume:
        return
    p = cfg.parallel
    planned = layout(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.data_parallel_size(world_size))
    if deepspeed:
        check_resumable(source, cfg.zero.stage, planned)
    else:
        check_reshardable(source.ckpt_dir, common_state(source.ckpt_dir), planned,
                          load_optim=not cfg.checkpoint.no_load_optim)


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


def _check_head(source: Resolved, cfg: RunConfig, weights_only: bool) -> None:
    """A reward model starts from a language model's weights (its head then starts fresh), never the other way
    round, and a resume continues the model that was saved."""
    ckpt_dir, saved = source.ckpt_dir, source.stored_config[0]["build"].get("head", "lm")
    if saved == cfg.build.head or (weights_only and saved == "lm"):
        return
    if saved == "reward":
        raise ConfigError(f"--load {ckpt_dir} holds a reward model, which has no output layer: a "
                          f"{cfg.recipe} job cannot start from it; --load a language model")
    raise ConfigError(f"--load {ckpt_dir} holds a language model: a {cfg.recipe} job starts from its weights only "
                      "(--finetune), it cannot resume it")


def _check_checkpoint_dirs(cfg: RunConfig, world_size: int) -> None:
    """What --load holds (checkpointing/resolver.py) can start this run on its engine: a Hugging Face model whose
    weight files match its config.json (every name and shape, from the file headers), or the tracker's
    checkpoint (or --load-fallback's choice) with its files the sizes they were saved with and its records
    their checksums, holding no pickled code, of the model this run builds: refused here, before any process
    group, rather than after. The tensor files' checksums are verified at the load, shared out."""
    s = cfg.checkpoint
    if not s.load:
        return
    start = starting_point(s)  # a fine-tuning job that already saved resumes its own --save
    source = start.source
    if source.kind is Kind.NONE and source.why != NOT_A_DIRECTORY:
        # A job restarted with the same command (--load = --save) starts from scratch the first time;
        # anything else is a typo that would silently train from scratch.
        if s.save and os.path.abspath(s.save) == os.path.abspath(s.load) and not s.finetune:
            print(f" no checkpoint in {s.load} yet: starting from scratch", flush=True)
            return
    source.check_for(start.use(cfg.zero.deepspeed))
    if source.kind in HF_KINDS:
        open_hf(source)
        return
    iteration, _ = loadable_iteration(source.path, s.load_fallback)
    _check_resumable(source.at(iteration), cfg, start, world_size)
