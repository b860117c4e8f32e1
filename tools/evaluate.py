"""The Qwen report's benchmarks for a model of ours, through lm-evaluation-harness, offline (docs/evaluation.md).

    python tools/evaluate.py --load runs/7b/ckpt --data-dir evals/
    python tools/evaluate.py --load hf/qwen-7b --data-dir evals/ --tasks gsm8k humaneval --allow-code-execution
    python tools/evaluate.py --load hf/qwen-7b-chat --data-dir evals/ --chat --output runs/eval.json

--load is a --save directory of ours (exported to a temporary Hugging Face directory, deleted after) or a
Hugging Face directory. The tasks read local files in each benchmark's published format under --data-dir;
lm-eval's hf back end runs them with the report's shot counts (Table 2) or, with --chat, zero-shot through
the chat template (Table 5). --protocol qwen (the default) prompts and scores each benchmark as Qwen measured
it (its eval/ scripts; OpenCompass's 2023 settings where it published none); --protocol lm-eval runs
lm-evaluation-harness's own tasks. The table printed at the end puts each score beside the published one,
labelled with the report's table.
"""

import argparse
import os
import sys

# No machine here reaches a dataset or model hub: never try.
for _var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")

from megatron_qwen.config.cli import OneLineErrorParser  # noqa: E402
from megatron_qwen.config.errors import ConfigError  # noqa: E402
from megatron_qwen.config.flags import POSITIVE, bounded  # noqa: E402
from megatron_qwen.evaluation.benchmarks import BENCHMARKS  # noqa: E402
from megatron_qwen.evaluation.published import FAMILIES  # noqa: E402
from megatron_qwen.evaluation.runner import EvalConfig, evaluate, format_table
from megatron_qwen.evaluation.task_configs import PROTOCOLS  # noqa: E402
from megatron_qwen.platform.notices import silence_megatron_notices  # noqa: E402
from megatron_qwen.tokenizer.files import TokenizerFileError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="tools/evaluate.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="a --save directory of ours, or a Hugging Face model directory")
    p.add_argument("--data-dir", required=True, help="the benchmarks' files, one folder each (docs/evaluation.md)")
    p.add_argument("--tasks", nargs="+", default=list(BENCHMARKS), metavar="TASK",
                   help=f"of {', '.join(BENCHMARKS)} (default: all, Table 2 of the report)")
    p.add_argument("--limit", type=bounded(float, POSITIVE), default=None,
                   help="only the first N questions of each task (a fraction below 1: that share)")
    p.add_argument("--batch-size", type=bounded(int, POSITIVE), default=8)
    p.add_argument("--output", default=None, help="JSON: the scores, lm-eval's results and its per-sample log")
    p.add_argument("--chat", action="store_true",
                   help="a chat model: zero-shot through its chat template (the report's Table 5 setting)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="qwen",
                   help="qwen: each benchmark prompted and scored as Qwen measured it (default); lm-eval: "
                   "lm-evaluation-harness's own tasks (docs/evaluation.md)")
    p.add_argument("--published", choices=FAMILIES, default="qwen",
                   help="whose published scores to print beside ours: Qwen (Table 2; --chat: Tables 5, 10, 12), "
                   "Code-Qwen (Table 10) or Math-Qwen (--chat: Table 12)")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run HumanEval and MBPP: each sample's program runs in a sandbox (docs/evaluation.md)")
    p.add_argument("--code-timeout", type=bounded(float, POSITIVE), default=10.0,
                   help="seconds per program in the sandbox")
    p.add_argument("--code-memory-mb", type=bounded(int, POSITIVE), default=1024,
                   help="address space per program in the sandbox")
    p.add_argument("--max-gen-toks", type=bounded(int, POSITIVE), default=None,
                   help="cap on generated tokens (default: each task's own, 256 to 1024)")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1)")
    p.add_argument("--dtype", default="auto", help="auto (the export's), bfloat16, float16 or float32")
    return p


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)

    cfg = EvalConfig(**{k: v for k, v in vars(args).items()})
    try:
        report = evaluate(cfg)
    except (ConfigError, TokenizerFileError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(format_table(report), flush=True)
    if cfg.output:
        print(f"[evaluate] scores, lm-eval's results and per-sample log: {cfg.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
