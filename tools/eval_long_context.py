"""Perplexity past the training length, with and without Qwen's long-context techniques (Table 3 of the
Qwen report: report section 2.5, docs/qwen.md section 7; docs/long_context.md).

    python tools/eval_long_context.py --load /models/Qwen-7B --data-path data/arxiv_text_document \\
        --train-length 2048 --lengths 1024 2048 4096 8192 16384 --output table3.png

--load is a --save directory of ours or a Hugging Face model directory; --data-path a held-out dataset
made by tools/preprocess_data.py (its documents, in order, are one token stream). At each length L the
first --eval-tokens tokens of the stream are cut into sequences of L tokens, and perplexity is
exp(mean negative log-likelihood) of every token after the first of each sequence. Rows, as Table 3
lays them out: none, + dynamic NTK, + dynamic NTK + LogN, + dynamic NTK + LogN + window.

Memory is bounded whatever the length: a sequence runs through the KV cache --chunk queries at a time
(attention scores [heads, chunk, L], logits [chunk, vocabulary]), so nothing of size L x L or
L x vocabulary exists. A cell whose techniques change nothing at its length (the NTK factor is 1 up to
the training length, LogN starts after it, a window at least L long is full attention) is not run
again: it takes the number of the row above.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.data.blend import DataPathError, token_id_outside
from megatron_qwen.data.progress import format_duration
from megatron_qwen.data.shards import ShardError, check_index, document_at, token_dtype
from megatron_qwen.model.long_context import LongContextSettings, add_long_context_arguments, ntk_alpha, window_schedule
from megatron_qwen.platform.notices import silence_megatron_notices

ROWS = ("none", "+ dynamic NTK", "+ dynamic NTK + LogN", "+ dynamic NTK + LogN + window")


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="tools/eval_long_context.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="a --save directory of ours or a Hugging Face model directory")
    p.add_argument("--data-path", required=True, help="held-out dataset prefix (.bin/.idx from preprocess_data.py)")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths in tokens (default: 1, 2, 4 and 8 times --train-length)")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help="tokens of the stream evaluated at each length (default: 4 x the longest length)")
    p.add_argument("--chunk", type=int, default=512, help="queries per forward pass (bounds the memory)")
    p.add_argument("--output", default=None, help="PNG plot of perplexity against length")
    p.add_argument("--json", default=None, help="write the table as JSON here")
    add_long_context_arguments(p, switches=False)
    return p


def row_settings(args, num_layers: int, train_length: int) -> dict[str, LongContextSettings]:
    """The four rows; the window row uses --window-attn (default: the training length in the first layer up
    to 4 times it in the last, so that nothing changes up to the training length, as in Table 3)."""
    windows = window_schedule(num_layers, args.window_attn or [train_length, 4 * train_length])
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


def sequence_nll(model, tokens, chunk: int) -> tuple[float, int]:
    """(summed negative log-likelihood, predicted tokens) of one sequence (a 1-D LongTensor), run
    through megatron-core's static KV cache ``chunk`` queries at a time."""
    import torch
    import torch.nn.functional as F
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
    import torch

    total, count = 0.0, 0
    for start in range(0, eval_tokens - length + 1, length):
        tokens = torch.from_numpy(stream[start:start + length].astype("int64")).to(next(model.parameters()).device)
        nll, n = sequence_nll(model, tokens, chunk)
        total, count = total + nll, count + n
        progress(length)
    return math.exp(total / count)


class Progress:
    """One line on stderr every ``interval`` seconds: cells done, tokens/s, ETA."""

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


def format_table(table: dict[str, dict[int, float]], lengths: list[int]) -> str:
    width = max(len(r) for r in table)
    lines = [f"{'technique':<{width}} | " + " | ".join(f"{n:>9}" for n in lengths),
             "-" * width + "-|-" + "-|-".join("-" * 9 for _ in lengths)]
    lines += [f"{row:<{width}} | " + " | ".join(f"{cells[n]:>9.2f}" for n in lengths) for row, cells in table.items()]
    return "\n".join(lines)


def plot(table: dict[str, dict[int, float]], lengths: list[int], train_length: int, path: str) -> None:
    from matplotlib.figure import Figure  # without pyplot: no GUI back end, files only

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for row, cells in table.items():
        ax.plot(lengths, [cells[n] for n in lengths], marker="o", label=row)
    ax.axvline(train_length, color="grey", linestyle=":", label=f"training length {train_length}")
    values = [v for cells in table.values() for v in cells.values()]
    ax.set(xscale="log", yscale="log" if max(values) > 10 * min(values) else "linear",
           xlabel="sequence length (tokens)", ylabel="perplexity", title="Perplexity past the training length")
    ax.minorticks_off()
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def check_token_ids(stream, prefix: str, vocab_size: int) -> None:
    """Every id of the evaluated tokens inside the model's vocabulary (one vectorised pass), else one line
    naming the shard and the document."""
    import numpy as np

    bad = np.flatnonzero((stream < 0) | (stream >= vocab_size))
    if bad.size:
        raise token_id_outside(prefix, document_at(prefix, int(bad[0])), int(stream[bad[0]]), vocab_size)


def run(args) -> dict:
    import numpy as np

    from megatron_qwen.inference import load_model_for_inference
    from megatron_qwen.model.long_context import set_long_context

    try:
        _, stream_tokens = check_index(args.data_path)
    except ShardError as e:
        raise ConfigError(f"--data-path: {e}") from None
    if args.chunk < 1:
        raise ConfigError(f"--chunk {args.chunk} must be at least 1")
    model = load_model_for_inference(args.load, args.max_position_embeddings)
    train_length = args.train_length or model.train_length
    lengths = sorted(args.lengths or [train_length * k for k in (1, 2, 4, 8)])
    eval_tokens = args.eval_tokens or 4 * lengths[-1]
    if lengths[0] < 2:
        raise ConfigError(f"--lengths {lengths[0]}: a sequence needs at least 2 tokens")
    if eval_tokens < lengths[-1] or stream_tokens < eval_tokens:
        raise ConfigError(f"--eval-tokens {eval_tokens} must be at least the longest length {lengths[-1]} and at "
                          f"most the {stream_tokens:,} tokens of --data-path {args.data_path}")
    if lengths[-1] > model.max_sequence_length:
        raise ConfigError(f"--lengths {lengths[-1]} exceeds the model's {model.max_sequence_length} positions (its "
                          "max_position_embeddings); lift the limit with --max-position-embeddings")
    stream = np.memmap(args.data_path + ".bin", dtype=token_dtype(args.data_path), mode="r")
    check_token_ids(stream[:eval_tokens], args.data_path, model.vocab_size_unpadded)
    rows = row_settings(args, model.config.num_layers, train_length)
    # Only cells whose techniques change something at their length are run.
    keys = {(row, n): effective(s, n) for row, s in rows.items() for n in lengths}
    todo = {}
    for (row, n), key in keys.items():
        todo.setdefault((key, n), row)
    work = sum(eval_tokens // n * n for _, n in todo)
    progress = Progress(work)
    measured = {}
    for (key, n), row in todo.items():
        # NTK alpha of the whole sequence, as a full forward of n tokens would pick it (the chunks
        # would otherwise take it from the first chunk's length).
        set_long_context(model, dataclasses.replace(rows[row], ntk_length=n))
        progress.cell = f"{row} at {n}"
        measured[key, n] = perplexity(model, stream, n, eval_tokens, args.chunk, progress)
    set_long_context(model, None)
    table = {row: {n: measured[keys[row, n], n] for n in lengths} for row in rows}
    return {"load": args.load, "data_path": args.data_path, "train_length": train_length, "lengths": lengths,
            "eval_tokens": eval_tokens, "windows": list(rows[ROWS[3]].windows), "perplexity": table}


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ConfigError, DataPathError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    table, lengths = result["perplexity"], result["lengths"]
    print(f"perplexity, {result['eval_tokens']:,} tokens of {result['data_path']} at each length; trained at "
          f"{result['train_length']}; windows per layer {result['windows']}")
    print(format_table(table, lengths))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        plot(table, lengths, result["train_length"], args.output)
        print(f"plot: {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
