"""Curate raw jsonl (text or HTML) into training shards: extraction and language ID, exact dedup, MinHash
fuzzy dedup, quality rules, 13-gram decontamination, upsampling, tokenizing (docs/curation.md).

    python tools/curate.py run --input raw/ --output curated/ --eval-data evals/ --upsample wiki=2
    python tools/curate.py fuzzy --output curated/            # one step, on the previous step's output
    python tools/curate.py run ... --executor slurm --partition cpu   # slurm array jobs, chained
    python tools/curate.py report --output curated/           # what each step removed
"""

import argparse
import os
import sys

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.curate.fuzzy import FuzzySettings
from megatron_qwen.curate.pipeline import (
    FOLDERS,
    STEPS,
    CurateConfig,
    ExecutorSettings,
    StageFailed,
    build_stages,
    data_path,
    format_summary,
    make_executors,
    run,
    skipped_records,
    step_input_files,
    summary,
)
from megatron_qwen.curate.quality import DEFAULT_RULES_FILE
from megatron_qwen.curate.upsample import parse_weights
from megatron_qwen.data.shards import ShardError
from megatron_qwen.data.sources import InputError
from megatron_qwen.tokenizer.files import TokenizerFileError, add_unpublished_flag, check_published


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", default=None, metavar="PATH",
                   help="raw .jsonl/.jsonl.gz/.jsonl.zst files, folders or globs (the extract step)")
    p.add_argument("--output", required=True, help="the curation folder: step outputs, logs, shards/")
    p.add_argument("--text-key", default="text", help="record key of the text (default: text)")
    p.add_argument("--html-key", default="html", help="record key of HTML, used when the text key is absent")
    p.add_argument("--extractor", default="resiliparse", choices=["resiliparse", "trafilatura"])
    p.add_argument("--languages", nargs="+", default=None, help="keep only these languages (ISO 639-1, e.g. en zh)")
    p.add_argument("--minhash-ngram", type=int, default=5, help="tokens per shingle (Chinese: characters)")
    p.add_argument("--minhash-permutations", type=int, default=256)
    p.add_argument("--minhash-threshold", type=float, default=0.8, help="Jaccard similarity of duplicates")
    p.add_argument("--minhash-bands", type=int, default=None, help="LSH bands (default: from the threshold)")
    p.add_argument("--minhash-rows", type=int, default=None, help="hashes per band")
    p.add_argument("--quality-config", default=DEFAULT_RULES_FILE, help="JSON of rule thresholds per language")
    p.add_argument("--quality-scorer", default=None, metavar="MODULE:FUNCTION",
                   help="model-based scorer, text -> score; documents under the config's min_score are dropped")
    p.add_argument("--eval-data", nargs="+", default=[], metavar="PATH",
                   help="evaluation sets for 13-gram decontamination: jsonl (one benchmark per file) or the "
                        "--data-dir of tools/evaluate.py (docs/evaluation.md)")
    p.add_argument("--upsample", nargs="+", default=[], metavar="SOURCE=WEIGHT",
                   help="source weights, e.g. wiki=2.5 code=0 (source: a record's `source`, else its input file)")
    p.add_argument("--upsample-mode", default="repeat", choices=["repeat", "blend"],
                   help="repeat documents, or keep them once and put the weights in --data-path")
    p.add_argument("--tokenizer-model", default=None, help="a qwen.tiktoken (default: the cached copy)")
    add_unpublished_flag(p)
    p.add_argument("--tasks", type=int, default=None, help="tasks per stage (default: one per input file)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "ray"])
    p.add_argument("--workers", type=int, default=-1,
                   help="local: concurrent tasks (default: CPUs); slurm: concurrent array tasks (default: no cap)")
    p.add_argument("--partition", default=None, help="slurm partition")
    p.add_argument("--time", default="24:00:00", help="slurm time limit per task")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--mem-per-cpu-gb", type=int, default=2)
    p.add_argument("--env-command", default=None, help="slurm: shell line that activates the environment")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_flags(sub.add_parser("run", help="every step, raw jsonl to shards"))
    for step in STEPS:
        add_flags(sub.add_parser(step, help=f"the {step} step alone (reads the previous step's folder)"))
    report = sub.add_parser("report", help="what each step removed, from the logs of a finished run")
    report.add_argument("--output", required=True)
    return p


def config_from(args) -> CurateConfig:
    if args.command in ("run", "extract") and not args.input:
        raise ConfigError(f"{args.command}: --input is required (the raw jsonl)")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output} is a file; pass a folder (the curation's steps, logs and shards)")
    fuzzy = FuzzySettings(ngram=args.minhash_ngram, num_perm=args.minhash_permutations,
                        threshold=args.minhash_threshold, bands=args.minhash_bands, rows=args.minhash_rows)
    check_published(args.tokenizer_model, args.allow_unpublished_tokenizer)
    if (fuzzy.bands is None) != (fuzzy.rows is None):
        raise ConfigError("--minhash-bands and --minhash-rows go together (or neither: chosen from the threshold)")
    if not 1 <= fuzzy.ngram <= 64:
        raise ConfigError(f"--minhash-ngram {fuzzy.ngram}: must be in 1..64")
    if not 0 < fuzzy.threshold <= 1:
        raise ConfigError(f"--minhash-threshold {fuzzy.threshold}: must be in (0, 1]")
    return CurateConfig(inputs=args.input or [], output=args.output, text_key=args.text_key, html_key=args.html_key,
                        extractor=args.extractor, languages=args.languages, fuzzy=fuzzy,
                        quality_config=args.quality_config, quality_scorer=args.quality_scorer,
                        eval_data=args.eval_data, upsample=parse_weights(args.upsample),
                        upsample_mode=args.upsample_mode, tokenizer_model=args.tokenizer_model, tasks=args.tasks)


def print_report(cfg: CurateConfig, stage_names: list[str]) -> None:
    print(format_summary(summary(cfg.output, stage_names)))
    if "extract" in stage_names and skipped_records(cfg):
        print(skipped_records(cfg))
    if "tokenize" not in stage_names:
        return
    try:
        pairs = data_path(cfg)
    except (InputError, ShardError):
        return  # not tokenized yet
    line = " ".join(f"{weight:.6g} {prefix}" for weight, prefix in pairs)
    with open(cfg.folder("data_path.txt"), "w") as f:
        f.write(line + "\n")
    print(f"--data-path {line}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            cfg = CurateConfig(inputs=[], output=args.output)
            names = ["extract", *(s.name for s in build_stages(cfg, STEPS[1:]))]
            print(format_summary(summary(cfg.output, names)))
            if skipped_records(cfg):
                print(skipped_records(cfg))
            if os.path.exists(cfg.folder("data_path.txt")):
                with open(cfg.folder("data_path.txt")) as f:
                    print("--data-path " + f.read().strip())
            return 0
        cfg = config_from(args)
        stages = build_stages(cfg, STEPS if args.command == "run" else (args.command,))
        if args.command not in ("run", "extract") and not step_input_files(cfg, args.command):
            previous = STEPS[STEPS.index(args.command) - 1]
            raise ConfigError(f"{args.command}: {cfg.folder(FOLDERS[previous])} holds no documents (*.jsonl.gz); "
                              f"run the {previous} step first")
        opts = ExecutorSettings(kind=args.executor, workers=args.workers, partition=args.partition, time=args.time,
                               cpus_per_task=args.cpus_per_task, mem_per_cpu_gb=args.mem_per_cpu_gb,
                               env_command=args.env_command)
        run(make_executors(stages, cfg.output, opts), cfg, stages)
    except (ConfigError, InputError, ImportError, StageFailed, TokenizerFileError) as e:
        print(f"curate: error: {e}", file=sys.stderr)
        return 2
    if args.executor == "local":
        print_report(cfg, [s.name for s in stages])
    else:
        print(f"submitted; when the jobs finish: python tools/curate.py report --output {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
