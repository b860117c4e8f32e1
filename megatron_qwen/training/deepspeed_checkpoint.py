"""DeepSpeed-engine checkpoints: how to recognise one, and its conversion into ours.

A deepspeed-engine checkpoint is DeepSpeed's own files (``mp_rank_XX_model_states.pt``,
``*zero_pp_rank_D_mp_rank_XX_*_states.pt``) in our directory layout (``ROOT/iter_NNNNNNN/``, the
tracker file), with ``deepspeed.json`` (ZeRO stage, layout, effective DeepSpeed config, run
configuration) beside them. It resumes only at its own TP x DP layout; ``convert_to_megatron``
turns it into a megatron-core checkpoint of ours (weights only) that every layout, the Hugging Face
export and generation read.
"""

import dataclasses
import json
import os
import tempfile

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.training.checkpoint_dirs import TRACKER, iteration_dir, latest_iteration

MARKER = "deepspeed.json"


def written_by_deepspeed(ckpt_dir: str) -> bool:
    """True for an iteration directory (``ROOT/iter_NNNNNNN``) the deepspeed engine wrote."""
    return os.path.isfile(os.path.join(ckpt_dir, MARKER))


def is_deepspeed_checkpoint(root: str) -> bool:
    """True when the latest checkpoint under the --save directory ``root`` was written by the deepspeed engine."""
    iteration = latest_iteration(root) if os.path.isdir(root) else None
    return iteration is not None and written_by_deepspeed(iteration_dir(root, iteration))


def _tp_rank_fp32_weights(ckpt_dir: str, tp_rank: int) -> dict:
    """The fp32 master weights of one tensor-parallel rank, gathered from its data-parallel partitions by
    DeepSpeed's own zero_to_fp32 (which reads one model-parallel rank per directory: we give it a
    directory of links to this rank's files)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    mine = [f for f in os.listdir(ckpt_dir) if f"mp_rank_{tp_rank:02d}_" in f]
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "tag"))
        for f in mine:
            os.symlink(os.path.abspath(os.path.join(ckpt_dir, f)), os.path.join(tmp, "tag", f))
        return get_fp32_state_dict_from_zero_checkpoint(tmp, tag="tag")


def load_deepspeed_weights(ckpt_dir: str, module) -> None:
    """Fill this rank's bare model (any TP) with the fp32 master weights of a deepspeed-engine checkpoint
    (any stage and layout): weights-only starts (--finetune). DeepSpeed's own module-only load of a ZeRO-3
    checkpoint looks for a 'latest' file we do not write and mixes model-parallel ranks."""
    import torch
    from megatron.core import parallel_state

    from megatron_qwen.model.layout import shard, unshard

    with open(os.path.join(ckpt_dir, MARKER)) as f:
        saved_tp = json.load(f)["layout"]["tp"]
    per_rank = [_tp_rank_fp32_weights(ckpt_dir, r) for r in range(saved_tp)]
    tp_rank, tp = (parallel_state.get_tensor_model_parallel_rank(),
                   parallel_state.get_tensor_model_parallel_world_size())
    for name, p in module.named_parameters():
        dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
        with torch.no_grad():
            p.copy_(shard(unshard([w[name] for w in per_rank], name, dim), name, p, tp_rank, tp))


def convert_to_megatron(source: str, destination: str) -> str:
    """Write the latest deepspeed-engine checkpoint under ``source`` as a checkpoint of ours at
    ``destination``: full (TP1) fp32 master weights, loadable as weights only at any layout
    (``--finetune`` semantics: fresh optimizer and iteration). Returns the iteration directory."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_qwen.config.arguments import RunConfig
    from megatron_qwen.config.parallel import ParallelConfig
    from megatron_qwen.config.zero import ZeroSettings
    from megatron_qwen.hf.files import staged_directory
    from megatron_qwen.hf.source import write_import_marker
    from megatron_qwen.model.builder import build_on_meta
    from megatron_qwen.model.layout import unshard
    from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
    from megatron_qwen.training.checkpoint import _model_state

    iteration = latest_iteration(source)
    ckpt_dir = iteration_dir(source, iteration)
    with open(os.path.join(ckpt_dir, MARKER)) as f:
        saved = json.load(f)
    run = RunConfig.from_dict(saved["run_config"])
    tp = saved["layout"]["tp"]
    per_rank = [_tp_rank_fp32_weights(ckpt_dir, r) for r in range(tp)]
    # The run as one process with the reference back end: the model whose full tensors we fill.
    cfg = dataclasses.replace(run, parallel=ParallelConfig(), zero=ZeroSettings(),
                              build=dataclasses.replace(run.build, transformer_impl="local", precision="fp32"))
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    try:
        chunk = build_on_meta(cfg)[0].to_empty(device="cpu")
        for name, p in chunk.named_parameters():  # PP=1: the saved names are the full model's
            if name not in per_rank[0]:
                raise ConfigError(f"{ckpt_dir}: the DeepSpeed checkpoint has no weight {name}")
            # The split dimension is where a rank's slice is narrower (a model built on meta has no TP tags).
            split = [d for d in range(p.dim()) if per_rank[0][name].shape[d] != p.shape[d]]
            dim = split[0] if split else None
            with torch.no_grad():
                p.copy_(unshard([w[name] for w in per_rank], name, dim))
        with staged_directory(destination) as staging:
            out = iteration_dir(staging, iteration)
            os.makedirs(out)
            state = _model_state([chunk])
            state.update(run_config=cfg.to_dict(), layout={"tp": 1, "pp": 1, "dp": 1})
            dist_checkpointing.save(state, out)
            write_import_marker(out, source, f"deepspeed-zero{saved['zero_stage']}", cfg.model)
            with open(os.path.join(staging, TRACKER), "w") as f:
                f.write(str(iteration))
    finally:
        destroy_distributed()
    return iteration_dir(destination, iteration)
