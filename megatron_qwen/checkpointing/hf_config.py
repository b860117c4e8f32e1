"""A Hugging Face model's config.json read as our model config, every value checked for type and range (one
line naming the file and the key): Qwen-1's ``qwen`` layout and transformers' ``qwen2``. The layout itself is
decided where every kind of checkpoint directory is (checkpointing/resolver.py); hf/layouts.py writes the file.
"""

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QWEN_VOCAB_SIZE, QwenModelConfig


def _number(value) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


_REQUIRED = object()


class ConfigKeys:
    """config.json read with its types and ranges checked: one-line errors naming the file and the key."""

    def __init__(self, config: dict, path: str):
        self.config, self.path = config, path

    def _given(self, key: str, default, kind: str) -> bool:
        """Whether config.json gives ``key`` a value (absent or null: the layout's default, if it has one)."""
        if self.config.get(key) is not None:
            return True
        if default is _REQUIRED:
            what = "missing" if key not in self.config else "null"
            raise ConfigError(f"{self.path}: key {key!r} is {what}; it must be {kind} (the model's shape "
                              "depends on it)")
        return False

    def _wrong(self, key: str, kind: str):
        return ConfigError(f"{self.path}: {key} = {self.config[key]!r} ({type(self.config[key]).__name__}); it must "
                           f"be {kind}: fix config.json")

    def integer(self, key: str, default=_REQUIRED, minimum: int = 1) -> int:
        """A whole number >= ``minimum`` (a JSON integer: not "64", 4.0 or true)."""
        kind = f"an integer of at least {minimum}"
        if not self._given(key, default, kind):
            return default
        if type(self.config[key]) is not int or self.config[key] < minimum:
            raise self._wrong(key, kind)
        return self.config[key]

    def number(self, key: str, default=_REQUIRED, below: float = float("inf")) -> int | float:
        """A finite positive number below ``below``."""
        kind = f"a positive number below {below:g}" if below < float("inf") else "a positive number"
        if not self._given(key, default, kind):
            return default
        if type(self.config[key]) not in (int, float) or not 0 < self.config[key] < below:
            raise self._wrong(key, kind)
        return self.config[key]

    def of_type(self, key: str, kind: type, default=None):
        """A value of JSON type ``kind`` (str, list, dict, bool), or ``default`` when absent or null."""
        if not self._given(key, default, f"a {kind.__name__}"):
            return default
        if type(self.config[key]) is not kind:
            raise self._wrong(key, f"a {kind.__name__}")
        return self.config[key]

    def expect(self, key: str, allowed: tuple, what: str) -> None:
        if key in self.config and self.config[key] not in allowed:
            raise ConfigError(f"{self.path}: {key} = {self.config[key]!r} is not Qwen-1's architecture ({what}); "
                              "this model cannot be converted")


def qwen1_lengths(k: "ConfigKeys") -> tuple[int, int]:
    """(seq_length, max_position_embeddings) of a Qwen-1 config.json, absent keys as QWenConfig's defaults
    (8192 both; the first releases spelled the limit n_positions). The limit is never below the training
    length: the model has been run at that many positions."""
    seq_length = k.integer("seq_length", 8192)
    positions = k.integer("max_position_embeddings", None) or k.integer("n_positions", None) or 8192
    return seq_length, max(positions, seq_length)


def _qwen1_shape(k: "ConfigKeys") -> dict:
    intermediate = k.integer("intermediate_size", minimum=2)
    if intermediate % 2:
        raise ConfigError(f"{k.path}: intermediate_size {intermediate} is odd; Qwen-1's is twice the FFN width")
    k.expect("rotary_pct", (1.0, 1), "RoPE over the whole head")
    k.expect("no_bias", (True,), "no bias except on QKV")
    seq_length, positions = qwen1_lengths(k)
    return {"ffn": intermediate // 2, "head_dim": k.integer("kv_channels", 128),
            "eps": k.number("layer_norm_epsilon", 1e-6, below=1), "base": k.number("rotary_emb_base", 10000),
            "seq_length": seq_length, "positions": positions}


def _qwen2_shape(k: "ConfigKeys", hidden: int, heads: int) -> dict:
    if k.integer("num_key_value_heads", heads) != heads:
        raise ConfigError(f"{k.path}: num_key_value_heads {k.config['num_key_value_heads']} differs from "
                          f"num_attention_heads {heads}; grouped-query attention is not Qwen-1's architecture and "
                          "cannot be converted")
    rope = k.of_type("rope_parameters", dict) or k.of_type("rope_scaling", dict) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"{k.path}: RoPE scaling {rope!r} cannot be converted; Qwen-1 uses plain RoPE")
    k.expect("use_sliding_window", (False,), "full attention in every layer")
    k.expect("hidden_act", ("silu",), "SwiGLU")
    if "head_dim" not in k.config and hidden % heads:
        raise ConfigError(f"{k.path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} and "
                          "there is no head_dim")
    base = k.number("rope_theta", None) or rope.get("rope_theta", 10000.0)
    if type(base) not in (int, float) or base <= 0:
        raise ConfigError(f"{k.path}: rope_parameters.rope_theta = {base!r}; it must be a positive number")
    positions = k.integer("max_position_embeddings", 32768)
    return {"ffn": k.integer("intermediate_size"), "head_dim": k.integer("head_dim", hidden // heads),
            "eps": k.number("rms_norm_eps", 1e-6, below=1), "base": base,
            "seq_length": positions, "positions": positions}  # Qwen2Config has no training length of its own


def model_of(k: ConfigKeys, layout: str) -> QwenModelConfig:
    """Our model config from the config.json ``k`` of a ``layout`` model. Missing optional keys take the
    defaults of the layout's own config class."""
    hidden, heads = k.integer("hidden_size"), k.integer("num_attention_heads")
    k.expect("tie_word_embeddings", (False,), "untied embedding and output layer")
    shape = _qwen1_shape(k) if layout == "qwen" else _qwen2_shape(k, hidden, heads)
    rows = k.integer("vocab_size")
    return QwenModelConfig(
        hidden_size=hidden, num_layers=k.integer("num_hidden_layers"), num_attention_heads=heads,
        ffn_hidden_size=shape["ffn"], vocab_size=min(QWEN_VOCAB_SIZE, rows), padded_vocab_size=rows,
        kv_channels=None if shape["head_dim"] * heads == hidden else shape["head_dim"],
        max_position_embeddings=shape["positions"], seq_length=shape["seq_length"],
        rotary_base=_number(shape["base"]), norm_epsilon=float(shape["eps"]),
    )
