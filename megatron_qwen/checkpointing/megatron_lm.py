"""Megatron-LM's records in a checkpoint, both ways. Source: Megatron-LM core_v0.16.1,
megatron/training/checkpointing.py (generate_state_dict, get_rng_state, load_checkpoint,
check_checkpoint_args, load_args_from_checkpoint); docs/checkpoints.md restates what is used.

Both stacks save through megatron-core's dist_checkpointing under the same tensor keys, so the model and
optimizer tensors read either way as they are. What differs is beside them. Ours: run_config, train_state,
data_state, layout (train_state.py, data_state.py, parallel_layout.py). Megatron-LM's: ``args`` (an
argparse.Namespace), ``checkpoint_version``, ``iteration``, ``opt_param_scheduler``, the ``content_metadata``
dist_checkpointing records (how the distributed optimizer's state is sharded), and the RNG object: a list of
dicts, sharded over (pipeline, tensor) ranks with the data- x context-parallel rank as replica id
(Megatron-LM's list holds one dict, or one per data-parallel rank under --data-parallel-random-init; ours one
per data- x context-parallel rank, so that each rank's states come back to it). A checkpoint of ours carries
both; one of Megatron-LM's is read by deriving ours from its ``args``.
"""

import argparse
import dataclasses

from megatron_qwen.checkpointing.data_state import data_state
from megatron_qwen.checkpointing.parallel_layout import layout
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QWEN_VOCAB_SIZE, QwenModelConfig
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import DataSettings, TrainSettings

CHECKPOINT_VERSION = 3.0  # what Megatron-LM's generate_state_dict writes
# Our RNG record's keys -> Megatron-LM's (get_rng_state).
_RNG_KEYS = {"random": "random_rng_state", "np": "np_rng_state", "torch": "torch_rng_state",
             "cuda": "cuda_rng_state", "tracker": "rng_tracker_states"}


def content_metadata(distributed_optimizer: bool) -> dict:
    """How the sharded state is laid out, as Megatron-LM's _build_sharded_state_dict_metadata says it: our
    distributed optimizer always saves ``fully_reshardable`` (loadable at any layout)."""
    sharding = {"distrib_optim_sharding_type": "fully_reshardable"} if distributed_optimizer else {}
    return {**sharding, "singleton_local_shards": False, "chained_optim_avoid_prefix": True}


def _vocab_divisor(rows: int, ids: int, tp: int) -> int:
    """The --make-vocab-size-divisible-by with which Megatron-LM, at ``tp``, pads ``ids`` to ``rows``: it rounds
    up to a multiple of divisor x TP (0 when no divisor does)."""
    for multiple in range(tp, rows + 1, tp):
        if rows % multiple == 0 and rows - multiple < ids:
            return multiple // tp
    return 0


def megatron_lm_args(cfg: RunConfig, lay: dict, state: TrainState, weights_only: bool) -> argparse.Namespace:
    """The ``args`` Megatron-LM's load_checkpoint reads: the parallel sizes and counters it restores, the fields
    check_checkpoint_args compares, whether optimizer and RNG states were saved, and the model fields
    --use-checkpoint-args takes (Qwen's architecture)."""
    m, t = cfg.model, cfg.train
    return argparse.Namespace(
        tensor_model_parallel_size=lay["tp"], pipeline_model_parallel_size=lay["pp"], data_parallel_size=lay["dp"],
        context_parallel_size=cfg.parallel.context_parallel_size, world_size=lay["tp"] * lay["pp"] * lay["dp"] *
        cfg.parallel.context_parallel_size, use_distributed_optimizer=cfg.zero.distributed_optimizer,
        ckpt_format="torch_dist", no_save_rng=weights_only, no_save_optim=weights_only, data_parallel_random_init=False,
        iteration=state.iteration, consumed_train_samples=state.consumed_samples, skipped_train_samples=0,
        consumed_valid_samples=0, global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
        seq_length=t.seq_length, num_layers=m.num_layers, hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size, num_attention_heads=m.num_attention_heads, kv_channels=m.head_dim,
        num_query_groups=m.num_attention_heads, group_query_attention=False,
        max_position_embeddings=m.max_position_embeddings, padded_vocab_size=m.padded_vocab_size,
        vocab_size=m.vocab_size,
        make_vocab_size_divisible_by=_vocab_divisor(m.padded_vocab_size, m.vocab_size, lay["tp"]),
        tokenizer_type=cfg.data.tokenizer_type, add_position_embedding=True, position_embedding_type="rope",
        use_rotary_position_embeddings=False, rotary_base=m.rotary_base, rotary_percent=1.0, rotary_interleaved=False,
        normalization="RMSNorm", layernorm_epsilon=m.norm_epsilon, apply_layernorm_1p=False, swiglu=True,
        squared_relu=False, add_bias_linear=False, add_qkv_bias=True, untie_embeddings_and_output_weights=True,
        apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0, num_experts=None,
        init_method_std=m.init_method_std, data_path=list(cfg.data.data_path) or None, mock_data=cfg.data.mock_data)


def megatron_lm_records(cfg: RunConfig, lay: dict, state: TrainState, scheduler_state: dict | None) -> dict:
    """What a checkpoint of ours carries in common.pt for Megatron-LM's load_checkpoint (``scheduler_state``
    None: a checkpoint of weights only, without optimizer, schedule or RNG states)."""
    records = {"args": megatron_lm_args(cfg, lay, state, weights_only=scheduler_state is None),
               "checkpoint_version": CHECKPOINT_VERSION, "iteration": state.iteration}
    return records if scheduler_state is None else {**records, "opt_param_scheduler": scheduler_state}


def rng_to_megatron_lm(states: list[dict]) -> list[dict]:
    """Our RNG records (rng_state.rng_states) of one place's ranks as Megatron-LM's object: a list of dicts under
    its key names. Without CUDA, the CUDA state is the CPU generator's (what Megatron-LM on the CPU shim
    records)."""
    return [{_RNG_KEYS[k]: state["torch"] if k == "cuda" and v is None else v for k, v in state.items()}
            for state in states]


def rng_from_megatron_lm(entry: dict, cuda: bool) -> dict:
    """One entry of Megatron-LM's RNG object as our record (rng_state.set_rng_states); its CUDA state only where
    there is CUDA."""
    ours = {k: entry[name] for k, name in _RNG_KEYS.items()}
    return {**ours, "cuda": ours["cuda"] if cuda else None}


def written_by_megatron_lm(common: dict) -> bool:
    """A common state dict of Megatron-LM's (its args, none of our records)."""
    return "run_config" not in common and "args" in common


# Megatron-LM args that fix the architecture, and the value Qwen's has (anything else is another network).
_QWEN_ARCHITECTURE = {"swiglu": True, "normalization": "RMSNorm", "add_bias_linear": False, "add_qkv_bias": True,
                      "untie_embeddings_and_output_weights": True, "position_embedding_type": "rope",
                      "rotary_percent": 1.0, "rotary_interleaved": False, "apply_layernorm_1p": False,
                      "num_experts": None, "group_query_attention": False}


def _arg(args, name: str, source: str):
    if not hasattr(args, name):
        raise ConfigError(f"{source}: Megatron-LM's args has no {name}; this checkpoint cannot be read (not "
                          "Megatron-LM's torch_dist format of core_v0.16)")
    return getattr(args, name)


def _padded(ids: int | None, args, source: str) -> int:
    """The embedding rows Megatron-LM pads ``ids`` to (args.padded_vocab_size is set at run time, and absent
    where the run built no tokenizer): a multiple of make_vocab_size_divisible_by x TP."""
    if not ids:
        raise ConfigError(f"{source}: Megatron-LM's args has neither padded_vocab_size nor vocab_size; the "
                          "embedding's row count is unknown")
    step = _arg(args, "make_vocab_size_divisible_by", source) * _arg(args, "tensor_model_parallel_size", source)
    return -(-ids // step) * step


def _run_config(args, source: str) -> RunConfig:
    """Our run configuration of the Megatron-LM run whose ``args`` are given; ConfigError in one line when
    that run is not Qwen's architecture."""
    for name, value in _QWEN_ARCHITECTURE.items():
        if getattr(args, name, value) != value:
            raise ConfigError(f"{source}: Megatron-LM's args.{name} is {getattr(args, name)!r}, not Qwen's "
                              f"{value!r}: another architecture, which this stack cannot load")
    heads, hidden = _arg(args, "num_attention_heads", source), _arg(args, "hidden_size", source)
    kv = getattr(args, "kv_channels", None)
    ids = getattr(args, "vocab_size", None)
    rows = getattr(args, "padded_vocab_size", None) or _padded(ids, args, source)
    model = QwenModelConfig(
        hidden_size=hidden, num_layers=_arg(args, "num_layers", source), num_attention_heads=heads,
        ffn_hidden_size=_arg(args, "ffn_hidden_size", source), vocab_size=ids or min(QWEN_VOCAB_SIZE, rows),
        padded_vocab_size=rows, kv_channels=None if kv in (None, hidden // heads) else kv,
        max_position_embeddings=_arg(args, "max_position_embeddings", source),
        rotary_base=getattr(args, "rotary_base", 10000), norm_epsilon=_arg(args, "layernorm_epsilon", source),
        init_method_std=getattr(args, "init_method_std", 0.02))
    train = TrainSettings(global_batch_size=_arg(args, "global_batch_size", source),
                          micro_batch_size=getattr(args, "micro_batch_size", 1),
                          seq_length=_arg(args, "seq_length", source))
    data = DataSettings(data_path=tuple(getattr(args, "data_path", None) or ()),
                        mock_data=bool(getattr(args, "mock_data", False)))
    parallel = ParallelSettings(tensor_model_parallel_size=_arg(args, "tensor_model_parallel_size", source),
                              pipeline_model_parallel_size=_arg(args, "pipeline_model_parallel_size", source))
    return RunConfig(recipe="pretrain", model_size="megatron-lm", model=model, train=train, data=data,
                     parallel=parallel)


def records_from_megatron_lm(common: dict, source: str) -> dict:
    """Our records (run_config, train_state, data_state, layout, and whether the optimizer and RNG states were
    saved) of a Megatron-LM checkpoint's common state dict (``source``: its file, for messages)."""
    args = common["args"]
    cfg = _run_config(args, source)
    iteration = common.get("iteration", getattr(args, "iteration", 0))
    state = TrainState(iteration=iteration, consumed_samples=getattr(args, "consumed_train_samples", 0))
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    cp = getattr(args, "context_parallel_size", 1) or 1
    dp = getattr(args, "data_parallel_size", None) or _arg(args, "world_size", source) // (tp * pp * cp)
    run_config = cfg.to_dict()
    del run_config["model"]["seq_length"]  # Qwen-1's trained length (where NTK begins): Megatron-LM has none
    return {"run_config": run_config, "train_state": dataclasses.asdict(state), "data_state": data_state(cfg),
            "layout": layout(tp, pp, dp, cp), "no_save_optim": bool(getattr(args, "no_save_optim", False)),
            "no_save_rng": bool(getattr(args, "no_save_rng", False))}
