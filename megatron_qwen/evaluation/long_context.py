"""Perplexity past the training length, with and without Qwen's long-context techniques (Table 3 of the
Qwen report: report section 2.5, docs/qwen.md section 7; docs/long_context.md). tools/eval_long_context.py
is its command line.

At each length L the first ``eval_tokens`` tokens of a held-out token stream (a .bin/.idx dataset's
documents, in order) are cut into sequences of L tokens, and perplexity is exp(mean negative
log-likelihood) of every token after the first of each sequence. Rows, as Table 3 lays them out: none,
+ dynamic NTK, + dynamic NTK + LogN, + dynamic NTK + LogN + window.

Memory is bounded whatever the length: a sequence runs through the KV cache ``chunk`` queries at a time
(attention scores [heads, chunk, L], logits [chunk, vocabulary]), so nothing of size L x L or
L x vocabulary exists. A cell whose techniques change nothing at its length (the NTK factor is 1 up to
the training length, LogN starts after it, a window at least L long is full attention) is not run
again: it takes the number of the row above.
"""

import dataclasses
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.data.blend import token_id_outside
from megatron_qwen.data.progress import format_duration
from megatron_qwen.data.shards import ShardError, check_index, document_at, token_dtype
from megatron_qwen.model.long_context import LongContextSettings, ntk_alpha, set_long_context, window_schedule

ROWS = ("none", "+ dynamic NTK", "+ dynamic NTK + LogN", "+ dynamic NTK + LogN + window")


def row_settings(num_layers: int, train_length: int, window_attn: list[int] | None) -> dict[str, LongContextSettings]:
    """The four rows; the window row uses ``window_attn`` (--window-attn; default: the training length in the
    first layer up to 4 times it in the last, so that nothing changes up to the training length, as in Table 3)."""
    windows = window_schedule(num_layers, window_attn or [train_length, 4 * train_length])
    return {
        ROWS[0]: LongContextSettings(train_length),
        ROWS[1]: LongContextSettings(train_length, dynamic_ntk=True),
        ROWS[2]: LongContextSettings(train_length, dynamic_ntk=True, logn_attn=True),
        ROWS[3]: LongContextSettings(train_length, dynamic_ntk=True, logn_attn=True, windows=windows),
    }


def effective(settings: LongContextSettings, length: int) -> tuple:
    """What ``settings`` changes at ``length``: equal keys give equal perplexities."""
    windows = tuple(w if w < length else None for w in settings.windows or ())
    return (ntk_alpha(length, settings.train_length) if settings.dynamic_ntk else 1,
            settings.logn_attn and length > settings.train_length,
            windows if any(windows) else None)


def sequence_nll(model, tokens: torch.Tensor, chunk: int) -> tuple[float, int]:
    """(summed negative log-likelihood, predicted tokens) of one sequence (a 1-D LongTensor), run
    through megatron-core's static KV cache ``chunk`` queries at a time."""
    # deferred: megatron-core takes seconds to import; --data-path is checked before it
    from megatron.core.inference.contexts import StaticInferenceContext

    length = tokens.numel()
    context = StaticInferenceContext(1, length)
    context.materialize_only_last_token_logits = False  # every position's logits: all are scored
    slots = torch.arange(length, device=tokens.device)
    total, count = 0.0, 0
    for start in range(0, length, chunk):
        ids = tokens[start:start + chunk]
        queries = slots[start:start + ids.numel()]
        mask = (slots[None, :queries[-1] + 1] > queries[:, None])[None, None]  # True = a later key: masked
        logits = model(ids[None], queries[None], mask, inference_context=context, runtime_gather_output=True)
        context.increment_sequence_len_offset(ids.numel())
        targets = tokens[start + 1:start + 1 + ids.numel()]  # the last position has nothing to predict
        vocab = model.vocab_size_unpadded
        total += F.cross_entropy(logits[0, :targets.numel(), :vocab].float(), targets, reduction="sum").item()
        count += targets.numel()
    return total, count


def perplexity(model, stream, length: int, eval_tokens: int, chunk: int, progress) -> float:
    """exp(mean NLL) of the first ``eval_tokens`` tokens of ``stream`` cut into sequences of ``length``."""
    total, count = 0.0, 0
    for start in range(0, eval_tokens - length + 1, length):
        tokens = torch.from_numpy(stream[start:start + length].astype("int64")).to(next(model.parameters()).device)
        nll, n = sequence_nll(model, tokens, chunk)
        total, count = total + nll, count + n
        progress(length)
    return math.exp(total / count)


class CellProgress:
    """One line on stderr every ``interval`` seconds: the cell, tokens done, tokens/s, ETA."""

    def __init__(self, total_tokens: int, interval: float = 10.0):
        self.total, self.done, self.interval = total_tokens, 0, interval
        self.start = self.last = time.monotonic()
        self.cell = ""

    def __call__(self, tokens: int) -> None:
        self.done += tokens
        now = time.monotonic()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = format_duration((self.total - self.done) / rate) if rate else "?"
            print(f"progress: {self.cell} | {self.done:,}/{self.total:,} tokens ({100 * self.done / self.total:.0f}%) "
                  f"| {rate:,.0f} tokens/s | ETA {eta}", file=sys.stderr, flush=True)


def check_token_ids(stream, prefix: str, vocab_size: int) -> None:
    """Every id of the evaluated tokens inside the model's vocabulary (one vectorised pass), else one line
    naming the shard and the document."""
    bad = np.flatnonzero((stream < 0) | (stream >= vocab_size))
    if bad.size:
        raise token_id_outside(prefix, document_at(prefix, int(bad[0])), int(stream[bad[0]]), vocab_size)


def _check_lengths(lengths: list[int], eval_tokens: int, stream_tokens: int, data_path: str, positions: int) -> None:
    if lengths[0] < 2:
        raise ConfigError(f"--lengths {lengths[0]}: a sequence needs at least 2 tokens")
    if eval_tokens < lengths[-1] or stream_tokens < eval_tokens:
        raise ConfigError(f"--eval-tokens {eval_tokens} must be at least the longest length {lengths[-1]} and at "
                          f"most the {stream_tokens:,} tokens of --data-path {data_path}")
    if lengths[-1] > positions:
        raise ConfigError(f"--lengths {lengths[-1]} exceeds the model's {positions} positions (its "
                          "max_position_embeddings); lift the limit with --max-position-embeddings")


def long_context_table(load: str, data_path: str, lengths: list[int] | None = None, eval_tokens: int | None = None,
                       chunk: int = 512, train_length: int | None = None, window_attn: list[int] | None = None,
                       max_positions: int | None = None) -> dict:
    """Table 3 for the model under ``load`` (a --save directory of ours or a Hugging Face model directory) on
    the held-out dataset ``data_path``: perplexity per row and length, with what it was measured on. Defaults:
    ``lengths`` 1, 2, 4 and 8 times the training length; ``eval_tokens`` 4 times the longest length; the
    training length and position limit the checkpoint's."""
    # deferred: megatron-core takes seconds to import; --data-path is checked before it
    from megatron_qwen.inference import load_model_for_inference

    try:
        _, stream_tokens = check_index(data_path)
    except ShardError as e:
        raise ConfigError(f"--data-path: {e}") from None
    if chunk < 1:
        raise ConfigError(f"--chunk {chunk} must be at least 1")
    model = load_model_for_inference(load, max_positions)
    train_length = train_length or model.train_length
    lengths = sorted(lengths or [train_length * k for k in (1, 2, 4, 8)])
    eval_tokens = eval_tokens or 4 * lengths[-1]
    _check_lengths(lengths, eval_tokens, stream_tokens, data_path, model.max_sequence_length)
    stream = np.memmap(data_path + ".bin", dtype=token_dtype(data_path), mode="r")
    check_token_ids(stream[:eval_tokens], data_path, model.vocab_size_unpadded)
    rows = row_settings(model.config.num_layers, train_length, window_attn)
    # Only cells whose techniques change something at their length are run.
    keys = {(row, n): effective(settings, n) for row, settings in rows.items() for n in lengths}
    todo = {}
    for (row, n), key in keys.items():
        todo.setdefault((key, n), row)
    progress = CellProgress(sum(eval_tokens // n * n for _, n in todo))
    measured = {}
    for (key, n), row in todo.items():
        # NTK alpha of the whole sequence, as a full forward of n tokens would pick it (the chunks
        # would otherwise take it from the first chunk's length).
        set_long_context(model, dataclasses.replace(rows[row], ntk_length=n))
        progress.cell = f"{row} at {n}"
        measured[key, n] = perplexity(model, stream, n, eval_tokens, chunk, progress)
    set_long_context(model, None)
    table = {row: {n: measured[keys[row, n], n] for n in lengths} for row in rows}
    return {"load": load, "data_path": data_path, "train_length": train_length, "lengths": lengths,
            "eval_tokens": eval_tokens, "windows": list(rows[ROWS[3]].windows), "perplexity": table}
