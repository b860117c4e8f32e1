"""Hugging Face weights into our model: this rank's chunks at any TP/PP/VP layout, or a
converted checkpoint of ours.

Each rank reads only what it holds: the tensors of its pipeline stage's layers, and of each
only its tensor-parallel rows or columns (every TP slice of a Hugging Face piece is one
contiguous block), so a rank's reads add up to its share of the model, not the whole of it.
"""

import torch
from megatron.core import parallel_state
from tqdm import tqdm

from megatron_qwen.checkpointing.resolver import Resolved, resolve
from megatron_qwen.checkpointing.weights import save_weights_only
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import BuildSettings
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.config.run import RunConfig
from megatron_qwen.config.settings import CheckpointSettings, DataSettings, TrainSettings
from megatron_qwen.hf.files import HFWeights
from megatron_qwen.hf.layouts import Piece, pieces, to_ours
from megatron_qwen.hf.source import open_hf
from megatron_qwen.model.builder import build_on_meta, unwrap
from megatron_qwen.model.layout import global_param_names
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed


def _piece_index(piece: Piece, shape: tuple[int, ...], dim: int | None, tp_rank: int, tp_size: int):
    """The slice of a Hugging Face tensor of ``shape`` that holds ``piece`` as one TP rank keeps it
    (``dim``: the parameter's partition dimension, None when every rank holds it whole)."""
    rows = shape[0] // piece.blocks
    start, stop = piece.block * rows, (piece.block + 1) * rows
    if dim == 0:
        return (slice(start + tp_rank * rows // tp_size, start + (tp_rank + 1) * rows // tp_size),)
    if dim == 1:
        cols = shape[1] // tp_size
        return slice(start, stop), slice(tp_rank * cols, (tp_rank + 1) * cols)
    return (slice(start, stop),) if piece.blocks > 1 else ()


@torch.no_grad()
def fill_chunks(weights: HFWeights, layout: str, head_dim: int, chunks, progress: bool = False) -> None:
    """Copy the Hugging Face tensors into this rank's model chunks, one parameter at a time."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    todo = []
    for chunk in chunks:
        model = unwrap(chunk)
        names = global_param_names(model)
        # a reward model's head has no Hugging Face language model tensor: it keeps its fresh values
        todo += [(names[local], param) for local, param in model.named_parameters()
                 if names[local] not in model.new_parameters]
    for gname, param in tqdm(todo, desc="loading Hugging Face weights", unit="tensor", disable=not progress):
        split = getattr(param, "tensor_model_parallel", False) and tp_size > 1
        dim = param.partition_dim if split else None
        parts = [weights.read(p.name, _piece_index(p, weights.shapes[p.name], dim, tp_rank, tp_size))
                 for p in pieces(gname, layout)]
        value = to_ours(gname, parts, head_dim)
        if value.shape != param.shape:
            raise ConfigError(f"{weights.directory}: {gname} of this rank has shape {list(value.shape)} from the "
                              f"Hugging Face tensors but the model has {list(param.shape)}; the run's model shape "
                              "is not the checkpoint's")
        param.copy_(value)


def load_hf_weights(source: Resolved, chunks, progress: bool = False) -> None:
    """Fill this rank's model chunks (any TP/PP/VP layout) from the Hugging Face model ``source``."""
    cfg, layout, weights = open_hf(source)
    fill_chunks(weights, layout, cfg.head_dim, chunks, progress)


def import_hf(source: str, destination: str, dtype: str | None = None) -> str:
    """Convert the Hugging Face model in ``source`` into a checkpoint of ours at ``destination``
    (a --save directory holding iteration 0) that any job --loads at any layout as weights only.
    ``dtype`` "bf16" or "fp32" (default: bf16 if the weights are all bf16, else fp32, so fp16
    weights widen losslessly). Returns the iteration directory."""
    model, layout, weights = open_hf(resolve(source))
    if dtype is None:
        dtype = "bf16" if set(weights.dtypes.values()) == {torch.bfloat16} else "fp32"
    if dtype not in ("bf16", "fp32"):
        raise ConfigError(f"--dtype {dtype} for a checkpoint of ours: choose bf16 or fp32 (our models train in "
                          "one of these)")
    # The run configuration a job reading the checkpoint would resolve from this --load, at the length the
    # model was trained at (generation and export read it as the checkpoint's training length).
    cfg = RunConfig(recipe=PRETRAIN.name, model_size="hf", model=model,
                    build=BuildSettings(transformer_impl="local", precision=dtype),
                    train=TrainSettings(seq_length=model.seq_length), data=DataSettings(mock_data=True),
                    checkpoint=CheckpointSettings(load=source))
    init_distributed(cfg.parallel, model.num_layers, cfg.build.seed)
    try:
        # Shapes without initial values: every parameter is overwritten from the files.
        chunks = [chunk.to_empty(device="cpu") for chunk in build_on_meta(model, cfg.parallel, cfg.build)]
        fill_chunks(weights, layout, model.head_dim, chunks, progress=True)
        return save_weights_only(destination, 0, chunks[0], cfg, source, layout)
    finally:
        destroy_distributed()
