"""Perplexity past the training length, with and without Qwen's long-context techniques (Table 3 of the
Qwen report: report section 2.5, docs/qwen.md section 7; docs/long_context.md). The command line of
megatron_qwen/evaluation/long_context.py, which says how each cell is measured.

    python tools/eval_long_context.py --load /models/Qwen-7B --data-path data/arxiv_text_document \\
        --train-length 2048 --lengths 1024 2048 4096 8192 16384 --output table3.png

--load is a --save directory of ours or a Hugging Face model directory; --data-path a held-out dataset
made by tools/preprocess_data.py (its documents, in order, are one token stream). At each length L the
first --eval-tokens tokens of the stream are cut into sequences of L tokens. Rows, as Table 3 lays them
out: none, + dynamic NTK, + dynamic NTK + LogN, + dynamic NTK + LogN + window.
"""

import argparse
import json
import os
import sys

from matplotlib.figure import Figure  # without pyplot: no GUI back end, files only

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.data.blend import DataPathError
from megatron_qwen.evaluation.long_context import long_context_table
from megatron_qwen.model.long_context import add_long_context_arguments
from megatron_qwen.platform.notices import silence_megatron_notices


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


def format_table(table: dict[str, dict[int, float]], lengths: list[int]) -> str:
    width = max(len(r) for r in table)
    lines = [f"{'technique':<{width}} | " + " | ".join(f"{n:>9}" for n in lengths),
             "-" * width + "-|-" + "-|-".join("-" * 9 for _ in lengths)]
    lines += [f"{row:<{width}} | " + " | ".join(f"{cells[n]:>9.2f}" for n in lengths) for row, cells in table.items()]
    return "\n".join(lines)


def plot(table: dict[str, dict[int, float]], lengths: list[int], train_length: int, path: str) -> None:
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


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)
    try:
        result = long_context_table(args.load, args.data_path, args.lengths, args.eval_tokens, args.chunk,
                                    args.train_length, args.window_attn, args.max_position_embeddings)
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
