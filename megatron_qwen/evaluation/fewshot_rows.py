"""Enough few-shot examples: a k-shot task draws its k examples from the benchmark's dev split (MMLU,
C-Eval); a dev file with fewer rows made lm-eval's sampler fail mid-run with a traceback. Checked with
the other data files, before any model is loaded (evaluation/runner.py: check_inputs)."""

from __future__ import annotations

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.local_data import records, split_files


def check_fewshot_rows(benchmarks: list[Benchmark], root: str, chat: bool) -> None:
    """One line for the first dev file with fewer rows than its task's shots (none with --chat: zero-shot)."""
    if chat:
        return
    for bench in (b for b in benchmarks if b.shots):
        for subject in bench.subjects or (None,):
            path = split_files(bench, root, subject).get("dev")
            if path is None:  # the task's examples come from elsewhere (lm-eval's own prompt, another split)
                continue
            rows = sum(1 for _ in records(bench, path))
            if rows < bench.shots:
                raise ConfigError(f"--data-dir {root}: task {bench.name}: {path} has {rows} row(s), fewer than the "
                                  f"{bench.shots} examples of its {bench.shots}-shot prompt; give the whole dev "
                                  "split (docs/evaluation.md), or evaluate with --chat (zero-shot)")
