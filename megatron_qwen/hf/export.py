"""A checkpoint of ours (saved at any TP/PP/VP/DP layout) streamed into a Hugging Face directory.

megatron-core stores each transformer weight kind as one tensor with the layer index as its
leading axis, whatever the layout that saved it; we read one layer's slice of each at a time,
convert it, and write it straight into safetensors files whose headers were planned from the
model's shape. Memory stays at a few copies of the largest tensor (the embedding), whatever
the model's depth.
"""

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from tqdm import tqdm

from megatron_qwen.checkpointing.resolver import HF_KINDS, Resolved, Use, resolve
from megatron_qwen.checkpointing.saving import staged_directory
from megatron_qwen.checkpointing.unpickling import restricted_unpickling
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.run import RunConfig
from megatron_qwen.hf.files import SafetensorsWriter
from megatron_qwen.hf.layouts import DTYPES, check_layout, global_weight_shapes, hf_shapes, to_hf_state_dict
from megatron_qwen.hf.side_files import write_side_files
from megatron_qwen.model.layout import LAYER_NAME, TE_NORM_PREFIXES
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.tokenizer.files import read_tokenizer_file


def _stored_key(global_name: str) -> tuple[str, int | None]:
    """(megatron-core's checkpoint key, layer index or None) of a global name. The key names the
    norms in transformer-engine's spelling whatever back end saved it."""
    m = LAYER_NAME.match(global_name)
    if m is None:
        return global_name, None
    rest = m.group(2)
    for local, te in TE_NORM_PREFIXES.items():
        if rest.startswith(local):
            rest = te + rest.removeprefix(local)
    return f"decoder.layers.{rest}", int(m.group(1))


def _groups(names: list[str]) -> list[list[str]]:
    """Global names in load order, one group per layer (top-level tensors alone)."""
    groups, layer_of = [], None
    for name in names:
        m = LAYER_NAME.match(name)
        layer = m.group(1) if m else None
        if layer is None or layer != layer_of:
            groups.append([])
        groups[-1].append(name)
        layer_of = layer
    return groups


def _load(ckpt_dir: str, names: list[str], stored: dict, num_layers: int) -> dict[str, torch.Tensor]:
    """The full tensors of ``names`` (one layer's, or one top-level tensor) from the checkpoint."""
    requests = {}
    for name in names:
        key, layer = _stored_key(name)
        meta = stored[key]
        if layer is None:
            requests[name] = ShardedTensor.from_rank_offsets(key, torch.empty(meta.global_shape, dtype=meta.dtype),
                                                             replica_id=0)
        else:
            data = torch.empty((1, *meta.global_shape[1:]), dtype=meta.dtype)
            requests[name] = ShardedTensor.from_rank_offsets(key, data, (0, layer, num_layers), replica_id=0)
    # Only part of each stored tensor is asked for, so the whole-tensor coverage check does not apply.
    loaded = dist_checkpointing.load(requests, ckpt_dir, validate_access_integrity=False)
    return {name: loaded[name][0] if _stored_key(name)[1] is not None else loaded[name] for name in names}


def _check_stored(ckpt_dir: str, cfg, stored: dict, head: str) -> None:
    """Every tensor the model needs is in the checkpoint, with the shape its run_config implies."""
    for name, shape in global_weight_shapes(cfg, head).items():
        key, layer = _stored_key(name)
        want = shape if layer is None else (cfg.num_layers, *shape)
        if key not in stored:
            raise ConfigError(f"{ckpt_dir}: tensor {key!r} is missing; the checkpoint is incomplete or not a "
                              "model of ours")
        if tuple(stored[key].global_shape) != want:
            raise ConfigError(f"{ckpt_dir}: tensor {key!r} has shape {list(stored[key].global_shape)} but the "
                              f"model in its run_config implies {list(want)}")


def export_hf(source: str, destination: str, layout: str, dtype: str | None = None, max_shard_size: int = 5 * 10**9,
              tokenizer_model: str | None = None, chat: bool | None = None, decoding: bool = True) -> list[str]:
    """Write the latest checkpoint under ``source`` (a --save directory) as a Hugging Face model
    of ``layout`` ("qwen" or "qwen2") at ``destination``; returns the files written.

    dtype: "bf16", "fp16" or "fp32" (default: the checkpoint's). chat: whether generation_config.json
    holds a chat model's settings (default: the checkpoint's run trained on ChatML data); decoding=False:
    none of its decoding settings (hf/generation.py). Qwen-1's seq_length is the length the run trained at,
    its --seq-length. A reward model's checkpoint goes out as Qwen2ForSequenceClassification (qwen2 only),
    without generation settings."""
    check_layout(layout)
    resolved = resolve(source).check_for(Use.EXPORT, flag="--load-dir")
    if resolved.kind in HF_KINDS:  # tools/convert_checkpoint.py and evaluation rename those (hf/relayout.py)
        raise ConfigError(f"{resolved.described('--load-dir')}: rename it with hf/relayout.py's relayout_hf")
    resolved.checked()  # whole, and its pickles data only
    read_tokenizer_file(tokenizer_model)  # before any work: a missing file fails fast
    init_distributed(ParallelSettings(), 1, 0)  # dist_checkpointing reads through a process group
    try:
        with restricted_unpickling():
            return _export(resolved, destination, layout, dtype, max_shard_size, tokenizer_model, chat,
                           decoding)
    finally:
        destroy_distributed()


def _export(source: Resolved, destination: str, layout: str, dtype: str | None, max_shard_size: int,
            tokenizer_model: str | None, chat: bool | None, decoding: bool) -> list[str]:
    """export_hf's work, on the checkpoint ``source`` already checked, inside the restricted unpickling."""
    ckpt_dir, run = source.ckpt_dir, RunConfig.from_dict(source.stored_config[0])
    cfg, head = run.model, run.build.head
    if head == "reward" and layout != "qwen2":
        raise ConfigError(f"--load-dir {source.path} holds a reward model, which goes out as transformers' "
                          "Qwen2ForSequenceClassification: pass --hf-layout qwen2")
    stored = dist_checkpointing.load_tensors_metadata(ckpt_dir)
    _check_stored(ckpt_dir, cfg, stored, head)
    out_dtype = DTYPES[dtype] if dtype else stored["embedding.word_embeddings.weight"].dtype
    plan = [(name, shape, out_dtype) for name, shape in hf_shapes(cfg, layout, head).items()]  # in write order
    names = list(global_weight_shapes(cfg, head))
    with staged_directory(destination) as staging:
        writer = SafetensorsWriter(staging, plan, max_shard_size)
        with tqdm(total=len(names), desc="exporting to Hugging Face", unit="tensor") as bar:
            for group in _groups(names):
                full = _load(ckpt_dir, group, stored, cfg.num_layers)
                for hf_name, tensor in to_hf_state_dict(full, cfg, layout).items():
                    writer.write(hf_name, tensor.to(out_dtype))
                bar.update(len(group))
        files = writer.close()
        chat = run.data.data_format == "chatml" if chat is None else chat
        files += write_side_files(staging, cfg, layout, out_dtype, run.train.seq_length, chat, tokenizer_model,
                                  decoding, head)
    return sorted(files)
