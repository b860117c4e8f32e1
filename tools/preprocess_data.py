"""Tokenize raw corpora into Megatron indexed datasets (.bin/.idx) with the Qwen tokenizer.

    python tools/preprocess_data.py --input corpus/ --output-prefix data/web --append-eod --workers 4

One input file -> `PREFIX_text_document.{bin,idx}` (Megatron-LM's naming). Several files -> one
shard per file, `PREFIX_<file>_text_document.{bin,idx}`; with --max-shard-bytes a large plain
.jsonl -> byte-range shards `PREFIX_<file>_partNNNNN_text_document.{bin,idx}`. Join them with
tools/merge_datasets.py or list them in --data-path. Complete shards are skipped on rerun. See
docs/data.md.
"""

import argparse
import os
import sys
import time

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.data.preference import PAIR_FORMATS
from megatron_qwen.data.preprocess import (
    PreprocessSettings,
    nothing_kept,
    plan_shards,
    remove_shards,
    run_shards,
    shard_outputs,
)
from megatron_qwen.data.shards import MESSAGES_KEY, PAIRS_KEY, TEXT_KEY, output_prefix_problem
from megatron_qwen.data.sources import BadRecordError, InputError, expand_inputs
from megatron_qwen.tokenizer import DEFAULT_SYSTEM_PROMPT, TokenizerFileError, load_tokenizer
from megatron_qwen.tokenizer.files import add_unpublished_flag, check_published

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: digits with an optional binary suffix K, M, G or T (`512M`, `4G`)."""
    number, suffix = (text[:-1], text[-1:].upper()) if text[-1:].isalpha() else (text, "")
    if not number.isdigit() or suffix not in SIZE_SUFFIXES or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive byte count such as 1000000, 512M or 4G")
    return int(number) * SIZE_SUFFIXES[suffix]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet), directories or globs")
    p.add_argument("--output-prefix", required=True, help="output path prefix, e.g. data/web")
    p.add_argument("--json-keys", nargs="+", default=None,
                   help="keys to tokenize, one dataset each (default: text; with --chatml: messages)")
    p.add_argument("--append-eod", action="store_true", help="append <|endoftext|> to every document (pretraining)")
    p.add_argument("--chatml", action="store_true",
                   help='SFT: records are {"messages": [{"role", "content"}]}; also writes the loss mask')
    p.add_argument("--pairs", action="store_true",
                   help="comparison pairs for the reward model (docs/data.md): one dataset PREFIX_pairs_document, "
                        "each pair's chosen then rejected conversation, each ending with the end token <|im_end|>")
    p.add_argument("--pair-format", choices=list(PAIR_FORMATS), default=None,
                   help="--pairs: the records' format (default: pairs); pairs: {prompt or messages, chosen, rejected}; "
                        "the others are the public formats of the Qwen report's Table 4 sets (data/preference.py)")
    p.add_argument("--no-default-system-prompt", action="store_true",
                   help=f"--chatml, --pairs: leave conversations without a system message as they are (default: they "
                        f"get Qwen's {DEFAULT_SYSTEM_PROMPT!r}, as its finetune.py does)")
    p.add_argument("--tokenizer-model", default=None, help="a qwen.tiktoken (default: the cached copy)")
    add_unpublished_flag(p)
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: one per CPU); with fewer shards than workers they share each shard")
    p.add_argument("--encode-threads", type=int, default=None,
                   help="tokenizer threads per worker (default: CPUs / workers)")
    p.add_argument("--max-shard-bytes", type=parse_size, default=None, metavar="SIZE",
                   help="split each plain .jsonl larger than SIZE (e.g. 512M, 4G) into byte-range shards of at most "
                        "SIZE; .jsonl.gz, .jsonl.zst and .parquet files stay one shard each "
                        "(default: one shard per file)")
    p.add_argument("--shard-index", type=int, default=0, help="this task's slice of the shard list (slurm array)")
    p.add_argument("--num-shards", type=int, default=1, help="number of slices of the shard list (slurm array size)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress lines (0: none)")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: must be at least 1")
    if args.encode_threads is not None and args.encode_threads < 1:
        parser.error(f"--encode-threads {args.encode_threads}: must be at least 1")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index {args.shard_index} --num-shards {args.num_shards}: need 0 <= index < num-shards")
    if args.chatml and args.append_eod:
        parser.error("--append-eod does not apply to --chatml (each turn already ends with <|im_end|>)")
    if args.chatml and args.json_keys and len(args.json_keys) != 1:
        parser.error("--chatml takes one --json-keys entry (the messages list)")
    if args.no_default_system_prompt and not (args.chatml or args.pairs):
        parser.error("--no-default-system-prompt applies to --chatml and --pairs only")
    if args.pairs and (args.chatml or args.append_eod or args.json_keys):
        parser.error("--pairs writes one dataset of its own: drop --chatml, --append-eod and --json-keys")
    if args.pair_format and not args.pairs:
        parser.error(f"--pair-format {args.pair_format} applies to --pairs only: add --pairs, or drop it")
    if output_prefix_problem(args.output_prefix):
        parser.error(output_prefix_problem(args.output_prefix))


def print_summary(result, elapsed: float, tasks, opts: PreprocessSettings) -> None:
    stats = result.stats
    print(f"shards: {result.done} written, {result.skipped} already complete (skipped), {len(result.failed)} failed")
    print(f"documents {stats.documents:,} | tokens {stats.tokens:,} | input {stats.input_bytes / 1e6:,.1f} MB | "
          f"{elapsed:.1f} s: {stats.documents / elapsed:,.0f} docs/s, {stats.input_bytes / 1e6 / elapsed:,.1f} MB/s, "
          f"{stats.tokens / elapsed / 1e6:,.2f}M tokens/s")
    if stats.bad:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in stats.bad.most_common())
        print(f"skipped records: {sum(stats.bad.values()):,} ({reasons})")
        for example in stats.examples[:20]:
            print(f"  {example}")
    for failure in result.failed:
        print(f"failed: {failure}")
    if len(tasks) == 1:
        print("output: " + ", ".join(f"{p}.bin/.idx" for p in shard_outputs(tasks[0], opts)))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    keys = (PAIRS_KEY,) if args.pairs else tuple(args.json_keys or [MESSAGES_KEY if args.chatml else TEXT_KEY])
    start = time.monotonic()
    try:
        files = expand_inputs(args.input)
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (slurm, taskset)
        # Processes before threads: threads of one process hand the GIL to each other at every
        # document, which a busy machine makes slow; separate processes never wait on each other.
        workers = args.workers or cpus
        opts = PreprocessSettings(keys=keys, chatml=args.chatml, append_eod=args.append_eod, strict=args.strict,
                       threads=args.encode_threads or max(1, cpus // workers),
                       default_system_prompt=None if args.no_default_system_prompt else DEFAULT_SYSTEM_PROMPT,
                       pair_format=(args.pair_format or "pairs") if args.pairs else None)
        tasks = plan_shards(files, args.output_prefix, opts, args.shard_index, args.num_shards, args.max_shard_bytes)
        check_published(args.tokenizer_model, args.allow_unpublished_tokenizer)
        tokenizer = load_tokenizer(args.tokenizer_model)
        result = run_shards(tasks, opts, tokenizer, workers, args.log_interval)
    except (InputError, BadRecordError, TokenizerFileError) as e:
        print(f"preprocess_data: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"preprocess_data: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preprocess_data: interrupted; unfinished shards were not renamed and will be redone", file=sys.stderr)
        return 130
    if result.done and not result.skipped and not result.failed and not result.stats.documents:
        remove_shards(tasks, opts)  # empty datasets would pass for complete on a rerun
        print(f"preprocess_data: error: --input {' '.join(args.input)}: {nothing_kept(result.stats, opts)}",
              file=sys.stderr)
        return 2
    print_summary(result, max(time.monotonic() - start, 1e-9), tasks, opts)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
