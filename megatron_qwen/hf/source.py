"""What a --load directory holds when it is not a checkpoint a run of ours saved: a Hugging Face
model, or a checkpoint converted from one (tools/convert_checkpoint.py). Both hold weights only
and fix the model's shape; neither needs megatron-core to be recognized.
"""

import os
import sys

from megatron_qwen.checkpointing.directory import import_marker
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QwenModelConfig, model_preset
from megatron_qwen.hf.files import HFWeights
from megatron_qwen.hf.layouts import IGNORED_SUFFIXES, LAYOUTS, hf_shapes, read_hf_config


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def imported_model(load: str) -> QwenModelConfig | None:
    """The model shape a Hugging Face --load (or a checkpoint converted from one) fixes; None for
    any other directory."""
    if is_hf_dir(load):
        return read_hf_config(load)[0]
    marker = import_marker(load)
    return QwenModelConfig(**marker["model"]) if marker else None


def holds_weights_only(load: str) -> bool:
    """True for a Hugging Face directory or a checkpoint converted from one: a run starts from
    their weights with a fresh optimizer and iteration, as with --finetune."""
    return is_hf_dir(load) or import_marker(load) is not None


def open_hf(directory: str) -> tuple[QwenModelConfig, str, HFWeights]:
    """(model config, layout, weights) of a Hugging Face model directory, every tensor's name
    and shape checked against config.json before anything is read."""
    cfg, layout = read_hf_config(directory)
    weights = HFWeights(directory)
    expected = hf_shapes(cfg, layout)
    for name in weights.shapes:
        if name not in expected and not name.endswith(IGNORED_SUFFIXES):
            raise ConfigError(f"{weights.where(name)}: unexpected tensor {name!r}, not part of a {LAYOUTS[layout]} "
                              f"with the shape in config.json; is config.json this model's?")
    for name, shape in expected.items():
        if name not in weights.shapes:
            raise ConfigError(f"{directory}: tensor {name!r} is missing from the weight files (config.json implies "
                              f"shape {list(shape)}); download the whole model")
        if weights.shapes[name] != shape:
            raise ConfigError(f"{weights.where(name)}: tensor {name!r} has shape {list(weights.shapes[name])} but "
                              f"config.json implies {list(shape)}; the weights and config.json do not match")
        if not weights.dtypes[name] or not weights.dtypes[name].is_floating_point:
            raise ConfigError(f"{weights.where(name)}: tensor {name!r} has dtype {weights.dtypes[name]}, expected "
                              "bf16, fp16 or fp32 weights")
    return cfg, layout, weights


def lift_position_limit(limit: int, wanted: int, what: str) -> int:
    """``wanted`` positions instead of the checkpoint's ``limit`` (the --max-position-embeddings flag),
    with a warning on stderr when it lifts the limit."""
    if wanted < 1:
        raise ConfigError(f"--max-position-embeddings {wanted} must be at least 1")
    if wanted > limit:
        print(f"warning: --max-position-embeddings {wanted} lifts the position limit of {what} ({limit}); RoPE has "
              "no learned positions, but the model has never been run that far", file=sys.stderr, flush=True)
    return wanted


def check_flags_against(imported: QwenModelConfig, load: str, flags: dict, model_size: str | None) -> QwenModelConfig:
    """The model of a run whose --load fixes the shape: ``imported``, with --vocab-size (the
    tokenizer's ids) and --max-position-embeddings (a limit, not a shape: RoPE has no learned
    positions) as the only flags that may change it. A shape flag (``flags``: field -> value or
    None) or a --model-size preset (``model_size`` when named) that contradicts it is refused."""
    flags = dict(flags)
    vocab = flags.pop("vocab_size", None)
    positions = flags.pop("max_position_embeddings", None)
    if positions is not None:
        imported = imported.with_overrides(max_position_embeddings=lift_position_limit(
            imported.max_position_embeddings, positions, f"--load {load}"))
    for field, value in flags.items():
        has = imported.head_dim if field == "kv_channels" else getattr(imported, field)
        if value is not None and value != has:
            raise ConfigError(f"--{field.replace('_', '-')} {value} contradicts --load {load}, whose model has "
                              f"{field} {has}; drop the flag (the shape comes from the checkpoint)")
    if model_size is not None:
        try:
            preset = model_preset(model_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for field in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "padded_vocab_size"):
            if getattr(preset, field) != getattr(imported, field):
                raise ConfigError(f"--model-size {model_size} has {field} {getattr(preset, field)} but --load {load} "
                                  f"has {getattr(imported, field)}; drop --model-size or load the matching model")
    if vocab is not None:
        if vocab > imported.padded_vocab_size:
            raise ConfigError(f"--vocab-size {vocab} exceeds the {imported.padded_vocab_size} vocabulary rows of "
                              f"--load {load}; pass at most {imported.padded_vocab_size}")
        return imported.with_overrides(vocab_size=vocab)
    return imported
