"""The files next to an export's weights, whichever way it was written (from a checkpoint of ours, or
converted from another Hugging Face layout): config.json, generation_config.json, qwen.tiktoken, and the
tokenizer files each layout's clients read (docs/checkpoints.md "What an export contains")."""

import json
import os

import torch

from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.hf.generation import generation_config
from megatron_qwen.hf.layouts import hf_config
from megatron_qwen.hf.tokenizer_files import write_tokenizer_files
from megatron_qwen.tokenizer.files import read_tokenizer_file


def write_side_files(directory: str, cfg: QwenModelConfig, layout: str, dtype: torch.dtype, seq_length: int,
                     chat: bool, tokenizer_model: str | None = None, decoding: bool = True,
                     head: str = "lm") -> list[str]:
    """Write the side files of a ``layout`` export of ``cfg`` (weights in ``dtype``, trained at ``seq_length``;
    ``chat``: a chat model's generation settings; ``decoding``: generation.generation_config's; ``head``
    "reward": a reward model, which generates nothing and gets no generation_config.json) into ``directory``;
    returns their names."""
    files = {"config.json": hf_config(cfg, layout, dtype, seq_length, head)}
    if head == "lm":
        files["generation_config.json"] = generation_config(layout, chat, seq_length, decoding)
    if layout == "qwen":  # read by Qwen's remote-code tokenizer (tokenization_qwen.py, from the original model)
        files["tokenizer_config.json"] = {"tokenizer_class": "QWenTokenizer",
                                          "model_max_length": cfg.max_position_embeddings,
                                          "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}
    for name, content in files.items():
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f, indent=2)
    with open(os.path.join(directory, "qwen.tiktoken"), "wb") as f:  # what this project's tools read
        f.write(read_tokenizer_file(tokenizer_model)[0])
    names = [*files, "qwen.tiktoken"]
    if layout == "qwen2":  # transformers and vLLM read these, not qwen.tiktoken
        names += write_tokenizer_files(directory, cfg.max_position_embeddings, tokenizer_model)
    return names
