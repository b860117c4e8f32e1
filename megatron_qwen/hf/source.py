"""A Hugging Face model directory opened for reading (its kind and config.json come from
checkpointing/resolver.py), and the model of a run whose --load fixes the shape (a Hugging Face model, or a
checkpoint converted from one: tools/convert_checkpoint.py).
"""

import sys

from megatron_qwen.checkpointing.resolver import HF_KINDS, LAYOUTS, Resolved
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QwenModelConfig, model_preset
from megatron_qwen.hf.files import HFWeights
from megatron_qwen.hf.layouts import IGNORED_SUFFIXES, hf_shapes


def open_hf(source: Resolved, flag: str = "--load") -> tuple[QwenModelConfig, str, HFWeights]:
    """(model config, layout, weights) of a Hugging Face model directory as checkpointing/resolver.py resolved
    it (its config.json read there, once), every tensor's name and shape checked against config.json before
    anything is read. ConfigError naming ``flag`` for a directory of another kind."""
    directory = source.path
    if source.kind not in HF_KINDS:
        raise ConfigError(f"{source.described(flag)}, not a Hugging Face model directory (config.json and weights)")
    cfg, layout = source.hf_model, source.hf_layout
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
