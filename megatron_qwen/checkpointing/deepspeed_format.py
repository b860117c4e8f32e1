"""DeepSpeed-engine checkpoints (recognised by resolver.py): their weights, and conversions.

A deepspeed-engine checkpoint is DeepSpeed's own files (``mp_rank_XX_model_states.pt``,
``*zero_pp_rank_D_mp_rank_XX_*_states.pt``) in our directory layout (``ROOT/iter_NNNNNNN/``, the
tracker file), with ``deepspeed.json`` (ZeRO stage, layout, effective DeepSpeed config, run
configuration) beside them. It resumes as it is at its own TP x DP layout and ZeRO stage; at any other,
``to_universal`` converts it once with DeepSpeed's ``ds_to_universal`` (into ``iter_NNNNNNN/universal/``:
per-parameter fp32 weights and Adam moments, TP slices merged) for DeepSpeed's universal load, which
re-slices them for the new layout. ``convert_to_megatron`` turns it into a megatron-core checkpoint of
ours (weights only) that every layout, the Hugging Face export and generation read.
"""

import argparse
import dataclasses
import os
import re
import shutil
import tempfile

import torch

from megatron_qwen.checkpointing.parallel_layout import same_layout
from megatron_qwen.checkpointing.resolver import Resolved
from megatron_qwen.checkpointing.unpickling import check_pickles, restricted_unpickling, torch_load
from megatron_qwen.checkpointing.writer_lock import waiting_for
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.zero import ZeroSettings
from megatron_qwen.model.layout import LAYER_NAME, is_gated_fc1, shard, unshard

UNIVERSAL = "universal"  # ds_to_universal's output, inside the iteration directory


def _tp_rank_fp32_weights(ckpt_dir: str, tp_rank: int) -> dict:
    """The fp32 master weights of one tensor-parallel rank, gathered from its data-parallel partitions by
    DeepSpeed's own zero_to_fp32 (which reads one model-parallel rank per directory: we give it a
    directory of links to this rank's files)."""
    # deferred: DeepSpeed takes a second to import; only its engine's checkpoints need it
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    mine = [f for f in os.listdir(ckpt_dir) if f"mp_rank_{tp_rank:02d}_" in f]
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "tag"))
        for f in mine:
            os.symlink(os.path.abspath(os.path.join(ckpt_dir, f)), os.path.join(tmp, "tag", f))
        return get_fp32_state_dict_from_zero_checkpoint(tmp, tag="tag")


def load_deepspeed_weights(source: Resolved, module) -> None:
    """Fill this rank's bare model (any TP) with the fp32 master weights of the deepspeed-engine checkpoint
    ``source`` (any stage and layout): weights-only starts (--finetune). DeepSpeed's own module-only load of a
    ZeRO-3 checkpoint looks for a 'latest' file we do not write and mixes model-parallel ranks."""
    # deferred: megatron-core takes seconds to import; preflight imports this module
    from megatron.core import parallel_state

    ckpt_dir, saved_tp = source.ckpt_dir, source.marker["layout"]["tp"]
    check_pickles(ckpt_dir, deepspeed=True)
    with restricted_unpickling(deepspeed=True):
        per_rank = [_tp_rank_fp32_weights(ckpt_dir, r) for r in range(saved_tp)]
    tp_rank, tp = (parallel_state.get_tensor_model_parallel_rank(),
                   parallel_state.get_tensor_model_parallel_world_size())
    for name, p in module.named_parameters():
        if name not in per_rank[0] and name in module.new_parameters:
            continue  # a reward head started from a language model's checkpoint keeps its fresh values
        dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
        with torch.no_grad():
            p.copy_(shard(unshard([w[name] for w in per_rank], name, dim), name, p, tp_rank, tp))


def convert_to_megatron(source: Resolved, destination: str) -> str:
    """Write the latest deepspeed-engine checkpoint under ``source`` as a checkpoint of ours at
    ``destination``: full (TP1) fp32 master weights, loadable as weights only at any layout
    (``--finetune`` semantics: fresh optimizer and iteration). Returns the iteration directory."""
    # deferred: the model and megatron-core take seconds to import; preflight imports this module
    from megatron_qwen.checkpointing.weights import save_weights_only
    from megatron_qwen.model.builder import build_on_meta
    from megatron_qwen.platform.distributed import destroy_distributed, init_distributed

    ckpt_dir, saved = source.checked(), source.marker
    run = RunConfig.from_dict(source.stored_config[0])
    with restricted_unpickling(deepspeed=True):
        per_rank = [_tp_rank_fp32_weights(ckpt_dir, r) for r in range(saved["layout"]["tp"])]
    # The run as one process with the reference back end: the model whose full tensors we fill.
    cfg = dataclasses.replace(run, parallel=ParallelSettings(), zero=ZeroSettings(),
                              build=dataclasses.replace(run.build, transformer_impl="local", precision="fp32"))
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    try:
        chunk = build_on_meta(cfg.model, cfg.parallel, cfg.build)[0].to_empty(device="cpu")
        for name, p in chunk.named_parameters():  # PP=1: the saved names are the full model's
            if name not in per_rank[0]:
                raise ConfigError(f"{ckpt_dir}: the DeepSpeed checkpoint has no weight {name}")
            # The split dimension is where a rank's slice is narrower (a model built on meta has no TP tags).
            split = [d for d in range(p.dim()) if per_rank[0][name].shape[d] != p.shape[d]]
            dim = split[0] if split else None
            with torch.no_grad():
                p.copy_(unshard([w[name] for w in per_rank], name, dim))
        return save_weights_only(destination, source.iteration, chunk, cfg, source.path,
                                 f"deepspeed-zero{saved['zero_stage']}")
    finally:
        destroy_distributed()


def check_resumable(source: Resolved, stage: int, layout: dict) -> None:
    """Refuse, before any process group, a resume of the deepspeed-engine checkpoint ``source`` at ZeRO
    ``stage`` and ``layout`` (parallel_layout.layout) that DeepSpeed's universal checkpoint cannot carry (deepspeed
    0.19.8): across the ZeRO-3 boundary (its model-states files are named and loaded differently), or from a
    TP>1 checkpoint saved without the tensor-parallel slicing information (by an earlier version)."""
    ckpt_dir, saved = source.ckpt_dir, source.marker
    was = saved["zero_stage"]
    if (was == 3) != (stage == 3):
        raise ConfigError(f"--load {ckpt_dir} was saved at ZeRO-{was}; DeepSpeed's universal checkpoint does not "
                          f"take it to ZeRO-{stage}: resume it at ZeRO-{'3' if was == 3 else '1 or 2'} (any TP x DP "
                          "layout), or start from its weights with --finetune")
    unsliced = saved["layout"]["tp"] > 1 and not saved.get("universal_checkpoint_info")
    if unsliced and not same_layout(saved["layout"], layout):
        raise ConfigError(f"--load {ckpt_dir} was saved at {saved['layout']} without the tensor-parallel slicing a "
                          "universal checkpoint needs (an earlier version): resume it at that layout, or start from "
                          "its weights with --finetune")


def universal_checkpoint_info(module) -> dict:
    """How ds_to_universal merges each parameter's tensor-parallel slices, from megatron-core's
    ``tensor_model_parallel`` / ``partition_dim`` attributes (DeepSpeed saves it with the model states when
    the module carries it): replicated (the norms), split along dim 1 (row-parallel), SwiGLU's stacked
    [gate; up] fc1 (two sub-parameters along dim 0), or along dim 0 (everything else: DeepSpeed's default).
    One pattern per parameter name, the layer index generalized."""
    # deferred: DeepSpeed takes a second to import; only its engine's checkpoints need it
    from deepspeed.checkpoint.constants import (
        PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0,
        PARAMETER_WITH_ROW_PARALLELISM_PATTERNS,
        TP_REPLICATED_PARAMETER_PATTERNS,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    kinds: dict[str, set] = {TP_REPLICATED_PARAMETER_PATTERNS: set(), PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: set(),
                             PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0: set()}
    for name, p in module.named_parameters():
        layer = LAYER_NAME.match(name)
        pattern = (r"^decoder\.layers\.\d+\." + re.escape(layer.group(2)) if layer else "^" + re.escape(name)) + "$"
        if not getattr(p, "tensor_model_parallel", False):
            kinds[TP_REPLICATED_PARAMETER_PATTERNS].add(pattern)
        elif is_gated_fc1(name) and p.partition_dim == 0:
            kinds[PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0].add(pattern)
        elif p.partition_dim == 1:
            kinds[PARAMETER_WITH_ROW_PARALLELISM_PATTERNS].add(pattern)
        elif p.partition_dim != 0:
            raise ValueError(f"{name}: tensor-parallel along dim {p.partition_dim}, which a universal checkpoint "
                             "cannot describe")
    return {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            **{kind: sorted(patterns) for kind, patterns in kinds.items()}}


def to_universal(ckpt_dir: str) -> None:
    """DeepSpeed's universal checkpoint of the deepspeed-engine checkpoint ``ckpt_dir``, converted by its own
    ds_to_universal into ``ckpt_dir/universal`` (the tag to load) on the first call (written under a staging
    name, renamed when whole) and reused after. Call on one rank."""
    out = os.path.join(ckpt_dir, UNIVERSAL)
    with waiting_for(ckpt_dir):  # another job resuming the same checkpoint may be converting it: one at a time
        if not os.path.isdir(out):
            _convert_to_universal(ckpt_dir, out)


def _convert_to_universal(ckpt_dir: str, out: str) -> None:
    # deferred: DeepSpeed takes a second to import; only its engine's checkpoints need it
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    staging, source = out + ".partial", out + ".input"
    for leftover in (staging, source):  # a dead converter's (a live one holds the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    _without_extra_state(ckpt_dir, source)
    ds_to_universal(argparse.Namespace(input_folder=source, output_folder=staging, num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=False))
    shutil.rmtree(source)
    os.rename(staging, out)
    with open(os.path.join(ckpt_dir, "latest_universal"), "w") as f:  # DeepSpeed's own pointer, renamed too
        f.write(UNIVERSAL)


def _without_extra_state(ckpt_dir: str, source: str) -> None:
    """``ckpt_dir`` as ds_to_universal can read it, in ``source``: links to its files, but the model-states
    files rewritten without megatron-core's ``_extra_state`` entries (None in its linear layers), which
    ds_to_universal would try to save as fp32 weights (stages 1 and 2)."""
    os.makedirs(source)
    for f in os.listdir(ckpt_dir):
        path = os.path.join(ckpt_dir, f)
        if not f.endswith("_model_states.pt"):
            if os.path.isfile(path):
                os.symlink(os.path.abspath(path), os.path.join(source, f))
            continue
        state = torch_load(path, path, deepspeed=True)
        module = state.get("module") or {}
        if all(torch.is_tensor(v) for v in module.values()):
            os.symlink(os.path.abspath(path), os.path.join(source, f))
            continue
        state["module"] = type(module)((k, v) for k, v in module.items() if torch.is_tensor(v))
        torch.save(state, os.path.join(source, f))
