"""A Hugging Face model rewritten in the other (or the same) layout, tensor by tensor: no process group, no
megatron-core, no model. Evaluation, export and tools/convert_checkpoint.py use it for `qwen` <-> `qwen2`.

The two layouts hold the same tensors under other names, and Qwen-1's fused ones are row blocks of the
other layout's: `attn.c_attn` is q | k | v (`self_attn.{q,k,v}_proj`), and `mlp.w2`/`mlp.w1` are
`mlp.gate_proj`/`mlp.up_proj`. Each output tensor is read (only its rows, from disk), joined or cut along
rows, cast and written at once into safetensors files planned from the shapes, so the process holds one
output tensor and its parts at a time: the embedding's size twice, whatever the model's depth.
"""

import json
import os

import torch
from tqdm import tqdm

from megatron_qwen.checkpointing.resolver import resolve
from megatron_qwen.checkpointing.saving import staged_directory
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.hf.files import HFWeights, SafetensorsWriter
from megatron_qwen.hf.layouts import DTYPES, Piece, check_layout, global_weight_shapes, hf_shapes, pieces
from megatron_qwen.hf.side_files import write_side_files
from megatron_qwen.hf.source import open_hf
from megatron_qwen.tokenizer.files import read_tokenizer_file


def source_pieces(cfg, source_layout: str, layout: str) -> dict[str, list[Piece]]:
    """Each tensor of ``layout`` by name, in file order -> the pieces of ``source_layout`` it stacks by rows.

    Both layouts list the parts of one of our tensors in the same order (q, k, v; gate, up), so the i-th
    piece on one side is the i-th on the other."""
    parts: dict[str, list[Piece]] = {name: [] for name in hf_shapes(cfg, layout)}
    for global_name in global_weight_shapes(cfg):
        for theirs, ours in zip(pieces(global_name, source_layout), pieces(global_name, layout), strict=True):
            parts[ours.name].append(theirs)
    return parts


def read_piece(weights: HFWeights, piece: Piece) -> torch.Tensor:
    """The rows of ``piece`` (the whole tensor, or one of its equal row blocks), read from disk alone."""
    if piece.blocks == 1:
        return weights.read(piece.name)
    rows = weights.shapes[piece.name][0] // piece.blocks
    return weights.read(piece.name, (slice(piece.block * rows, (piece.block + 1) * rows),))


def stored_dtype(weights: HFWeights) -> torch.dtype:
    """The weights' one dtype, or fp32 when they mix several (fp32 holds each exactly)."""
    dtypes = set(weights.dtypes.values())
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def is_chat_model(directory: str) -> bool:
    """Whether the Hugging Face model's generation_config.json is a chat model's (Qwen's chat_format chatml)."""
    try:
        with open(os.path.join(directory, "generation_config.json")) as f:
            return json.load(f).get("chat_format") == "chatml"
    except (OSError, ValueError, AttributeError):  # absent or not a JSON object: nothing says chat
        return False


def relayout_hf(source: str, destination: str, layout: str, dtype: str | None = None,
                max_shard_size: int = 5 * 10**9, tokenizer_model: str | None = None,
                chat: bool | None = None, decoding: bool = True) -> list[str]:
    """Write the Hugging Face model in ``source`` (either layout) as a ``layout`` export at ``destination``,
    side files included, as an export from a checkpoint of ours writes them; returns the files written.

    dtype: "bf16", "fp16" or "fp32" (default: as stored). chat: a chat model's generation settings (default:
    the source's generation_config.json says chat_format chatml); decoding=False: none of its decoding
    settings (hf/generation.py). The training length Qwen-1's config carries is kept (a qwen2 source has
    none: its position limit stands in, as on import)."""
    check_layout(layout)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is unknown; choose bf16, fp16 or fp32")
    read_tokenizer_file(tokenizer_model)  # before any work: a missing file fails fast
    cfg, source_layout, weights = open_hf(resolve(source))  # every name and shape checked before a byte is written
    out_dtype = DTYPES[dtype] if dtype else stored_dtype(weights)
    parts = source_pieces(cfg, source_layout, layout)
    shapes = hf_shapes(cfg, layout)
    chat = is_chat_model(source) if chat is None else chat
    with staged_directory(destination) as staging:
        writer = SafetensorsWriter(staging, [(name, shape, out_dtype) for name, shape in shapes.items()],
                                   max_shard_size)
        for name, needed in tqdm(parts.items(), desc=f"{source_layout} -> {layout}", unit="tensor"):
            read = [read_piece(weights, piece) for piece in needed]
            writer.write(name, (read[0] if len(read) == 1 else torch.cat(read)).to(out_dtype))
            del read  # before the next tensor's reads: one tensor's parts in memory at a time
        files = writer.close()
        files += write_side_files(staging, cfg, layout, out_dtype, cfg.seq_length, chat, tokenizer_model, decoding)
    return sorted(files)
