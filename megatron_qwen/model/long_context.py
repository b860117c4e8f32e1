"""Long context without training (report section 2.5, docs/qwen.md section 7; docs/long_context.md):
dynamic NTK-aware RoPE, LogN attention scaling and layer-wise window attention, at inference only.

All three act on the rotated query and key right before the core attention, so they are one stage,
``LongContextStage``, inside the core-attention slot of the local layer spec (model/spec.py builds it
through ``downcast_after_rope`` in model/rope.py; it runs before the cast, in fp32 as Qwen rotates).
The stage is the identity until ``set_long_context`` switches techniques on in an eval-mode model;
training never does, and the stage has no parameters, so checkpoints are unchanged.

Positions are cache slots: key ``j`` of a forward with ``sk`` keys and ``sq`` queries sits at slot
``j`` and query ``i`` at slot ``sk - sq + i``; these are the positions megatron-core's RoPE uses (and
Qwen's LogN, which indexes by key length).

Dynamic NTK: RoPE with base ``b`` has inverse frequencies ``b ** (-2j / d)``; with
``b' = b * alpha ** (d / (d - 2))`` they become ``inv_freq[j] * alpha ** (-2j / (d - 2))``. megatron-core
has already rotated query and key by ``pos * inv_freq``; the stage rotates them on by
``pos * inv_freq' - pos * inv_freq`` (rotations in the same planes add), which is RoPE at the base
``b'`` without touching megatron-core's rotary module. ``alpha`` comes from the length of a forward
that starts at slot 0 (a prompt, a whole sequence) and is kept while a KV cache continues it, as
Qwen's modeling_qwen.py keeps its alpha during incremental decoding; ``ntk_length`` fixes it instead
(a long sequence evaluated in chunks).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_qwen.config.errors import ConfigError


@dataclass(frozen=True)
class LongContextSettings:
    """Which techniques run, for a model trained at ``train_length`` tokens (Qwen's ``seq_length``).
    ``windows``: per layer, how many of the latest tokens each query sees (itself included); None:
    full attention. ``ntk_length``: the length alpha is computed from (None: Qwen's rule above)."""

    train_length: int
    dynamic_ntk: bool = False
    logn_attn: bool = False
    windows: tuple[int, ...] | None = None
    ntk_length: int | None = None

    def __post_init__(self):
        if self.train_length < 2:
            raise ConfigError(f"train length {self.train_length} must be at least 2 (LogN divides by its log)")
        if self.windows is not None and min(self.windows) < 1:
            raise ConfigError(f"window sizes {list(self.windows)} must be at least 1 token")

    @property
    def active(self) -> bool:
        return self.dynamic_ntk or self.logn_attn or self.windows is not None


def ntk_alpha(length: int, train_length: int) -> int:
    """Qwen's NTK factor: 1 up to the training length, then 3, 7, 15, ... (2**k - 1) as the length doubles."""
    return max(2 ** math.ceil(math.log2(length / train_length) + 1) - 1, 1)


def ntk_base(base: float, alpha: float, head_dim: int) -> float:
    """The rescaled RoPE base, ``base * alpha ** (d / (d - 2))``."""
    return base * alpha ** (head_dim / (head_dim - 2))


def logn_factors(positions: torch.Tensor, train_length: int) -> torch.Tensor:
    """Query scale per 0-based position ``p``: ``log(p + 1) / log(train_length)`` once ``p + 1`` exceeds
    the training length, else 1 (Qwen counts positions from 1). fp32."""
    i = positions.to(torch.float64) + 1
    return torch.where(i > train_length, i.log() / math.log(train_length), torch.ones_like(i)).float()


def window_schedule(num_layers: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Per-layer windows from ``--window-attn``: one size per layer, or ``MIN MAX`` interpolated
    linearly from the first layer (MIN) to the last (MAX), rounded to whole tokens."""
    sizes = [int(s) for s in sizes]
    if len(sizes) == num_layers:
        return tuple(sizes)
    if len(sizes) != 2:
        raise ConfigError(f"--window-attn takes MIN MAX or one size per layer ({num_layers}); got {len(sizes)} "
                          "values")
    low, high = sizes
    if not 1 <= low <= high:
        raise ConfigError(f"--window-attn {low} {high}: need 1 <= MIN <= MAX (lower layers get shorter windows)")
    if num_layers == 1:
        return (high,)
    return tuple(round(low + (high - low) * i / (num_layers - 1)) for i in range(num_layers))


def window_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int) -> torch.Tensor:
    """[queries, keys], True = not attended (megatron-core's convention): keys after the query, or
    ``window`` or more positions before it."""
    distance = q_positions[:, None] - k_positions[None, :]
    return (distance < 0) | (distance >= window)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation (halves paired, as megatron-core and Qwen pair them) of x [s, b, heads, d] by
    angles [s, d/2]."""
    angles = torch.cat((angles, angles), dim=-1)[:, None, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat((-x2, x1), dim=-1) * angles.sin()


class LongContextStage(torch.nn.Module):
    """Between RoPE and the core attention of one layer: the identity unless ``set_long_context``
    gave it settings. Returns (query, key, attention_mask)."""

    def __init__(self, layer_number: int):
        super().__init__()
        self.layer_index = layer_number - 1  # megatron-core numbers layers globally from 1
        self.settings: LongContextSettings | None = None
        self.inv_freq: torch.Tensor | None = None  # the model's RoPE inverse frequencies (fp32)
        self.alpha = 1

    def forward(self, query, key, attention_mask):
        s = self.settings
        if s is None or self.training:
            return query, key, attention_mask
        sq, sk = query.shape[0], key.shape[0]
        k_pos = torch.arange(sk, device=query.device)
        q_pos = k_pos[sk - sq:]
        if s.dynamic_ntk:
            if s.ntk_length is not None:
                self.alpha = ntk_alpha(s.ntk_length, s.train_length)
            elif sq == sk:  # a forward from slot 0; a cached continuation keeps its alpha
                self.alpha = ntk_alpha(sk, s.train_length)
            if self.alpha > 1:
                d = 2 * self.inv_freq.numel()
                j = torch.arange(d // 2, device=query.device, dtype=torch.float64)
                scaled = (self.inv_freq.double() * self.alpha ** (-2 * j / (d - 2))).float()
                pos = k_pos.float()[:, None]
                angles = pos * scaled - pos * self.inv_freq  # fp32, as each rotation alone is computed
                query = _rotate(query, angles[sk - sq:])
                key = _rotate(key, angles)
        if s.logn_attn and sk > s.train_length:
            query = query * logn_factors(q_pos, s.train_length).to(query.dtype)[:, None, None, None]
        window = s.windows[self.layer_index] if s.windows is not None else None
        if window is not None and window < sk:
            outside = window_mask(q_pos, k_pos, window)[None, None]
            attention_mask = outside if attention_mask is None else attention_mask | outside
        return query, key, attention_mask


def set_long_context(model: torch.nn.Module, settings: LongContextSettings | None) -> None:
    """Switch the techniques of ``settings`` on in every layer of ``model`` (an eval-mode GPTModel built
    with the local, sdpa or flash spec); None switches them off."""
    stages = [m for m in model.modules() if isinstance(m, LongContextStage)]
    if not stages:
        raise ConfigError("long-context inference needs the local, sdpa or flash back end "
                          "(--transformer-impl); transformer-engine's attention has no stage for it")
    if settings is not None and settings.active and model.training:
        raise ConfigError("long-context techniques are for inference only: call model.eval() first")
    if settings is not None and settings.windows is not None:
        num_layers = model.config.num_layers
        if len(settings.windows) != num_layers:
            raise ConfigError(f"{len(settings.windows)} window sizes for a model of {num_layers} layers")
    inv_freq = model.rotary_pos_emb.inv_freq
    for stage in stages:
        stage.settings = settings if settings is not None and settings.active else None
        stage.inv_freq = inv_freq
        stage.alpha = 1


def add_long_context_arguments(parser, switches: bool) -> None:
    """The flags of tools/generate.py (``switches``: each technique on or off) and
    tools/eval_long_context.py (which runs every combination; it takes the windows and the length)."""
    g = parser.add_argument_group("long context (docs/long_context.md)")
    if switches:
        g.add_argument("--dynamic-ntk", action="store_true", help="dynamic NTK-aware RoPE base past --train-length")
        g.add_argument("--logn-attn", action="store_true", help="LogN scaling of queries past --train-length")
    g.add_argument("--window-attn", type=int, nargs="+", default=None, metavar="N",
                   help="window attention: MIN MAX (interpolated from the first layer to the last) or one window "
                        "per layer, in tokens")
    g.add_argument("--train-length", type=int, default=None,
                   help="the context the model was trained at (default: the checkpoint's --seq-length; "
                        "Qwen-1's seq_length in a Hugging Face config.json)")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="lift the position limit (default: the checkpoint's max_position_embeddings); RoPE has no "
                        "learned positions, so longer inputs run, with a warning")
