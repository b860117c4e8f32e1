"""A reward model's test accuracy on human preference sets, in the Qwen report's Table 4 layout
(docs/qwen.md section 11).

    python tools/evaluate_reward.py --load runs/rm/ckpt --data-dir preference_sets/
    python tools/evaluate_reward.py --load runs/rm/ckpt --pairs heldout=data/heldout.jsonl --output rm_eval.json

--load is the --save directory of a `python -m megatron_qwen.reward` run. --data-dir holds the public sets of
Table 4 as published, one folder each: anthropic_helpful_base/ and anthropic_helpful_online/ (Anthropic
HH-RLHF's test.jsonl.gz), openai_summarize/ (summarize-from-feedback comparisons), stanford_shp/ (SHP's test
files), prm800k/ (PRM800K's phase1_test.jsonl and phase2_test.jsonl). The table puts each accuracy beside the
report's PMP and RM rows; --output writes it as JSON.
"""

import argparse
import json
import os
import sys

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import POSITIVE, bounded
from megatron_qwen.data.sources import InputError
from megatron_qwen.platform.notices import silence_megatron_notices
from megatron_qwen.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from megatron_qwen.tokenizer.files import TokenizerFileError, add_unpublished_flag, check_published
from megatron_qwen.training.preflight import check_writable


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="tools/evaluate_reward.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="the --save directory of a reward model run")
    p.add_argument("--data-dir", default=None, help="Table 4's public sets, one folder each (docs/qwen.md section 11)")
    p.add_argument("--pairs", nargs="+", default=[], metavar="NAME=FILE",
                   help="more sets in our jsonl format ({prompt or messages, chosen, rejected}; docs/data.md)")
    p.add_argument("--seq-length", type=bounded(int, POSITIVE), default=None,
                   help="tokens per sequence, longer ones cut from the left (default: the run's --seq-length)")
    p.add_argument("--micro-batch-size", type=bounded(int, POSITIVE), default=16, help="sequences per forward pass")
    p.add_argument("--no-default-system-prompt", action="store_true",
                   help="as tools/preprocess_data.py: score conversations without a system message as they are")
    p.add_argument("--tokenizer-model", default=None, help="a qwen.tiktoken (default: the cached copy)")
    add_unpublished_flag(p)
    p.add_argument("--output", default=None, help="JSON: accuracy, pair counts and the published values per set")
    return p


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)
    if args.data_dir is None and not args.pairs:
        print("error: pass --data-dir (Table 4's sets) or --pairs NAME=FILE", file=sys.stderr)
        return 2
    # deferred: megatron-core takes seconds to import; the arguments are checked before
    from megatron_qwen.evaluation.reward import evaluate_reward, format_table
    from megatron_qwen.platform.distributed import destroy_distributed

    try:
        if args.output:
            check_writable("--output", args.output, "file")
        check_published(args.tokenizer_model, args.allow_unpublished_tokenizer)
        tokenizer = load_tokenizer(args.tokenizer_model)
        report = evaluate_reward(args.load, args.data_dir, args.pairs, args.seq_length, args.micro_batch_size,
                                 tokenizer, None if args.no_default_system_prompt else DEFAULT_SYSTEM_PROMPT,
                                 report=lambda line: print(f"[evaluate_reward] {line}", flush=True))
    except (ConfigError, TokenizerFileError, InputError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        destroy_distributed()
    print(format_table(report["sets"]), flush=True)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.output + ".tmp", args.output)
        print(f"[evaluate_reward] {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
