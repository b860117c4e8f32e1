"""An evaluation's --output holds text of its inputs (lm-eval's per-sample log quotes every question), so it
is written no more readable than the most restrictive input file it read: a benchmark file reachable only
by root, through a symlink in --data-dir, must not come out world-readable."""

from __future__ import annotations

import glob
import os

from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.local_data import GSM8K_EXEMPLARS, split_files

READ_WRITE = 0o666


def input_files(benchmarks: list[Benchmark], root: str, gsm8k_exemplar_file: bool = False) -> list[str]:
    """The files the benchmarks read under ``root`` (a MATH subject is a folder of files); with
    ``gsm8k_exemplar_file`` (the protocol reads it, local_data.check_data) GSM8K's exemplars too."""
    files = []
    for bench in benchmarks:
        for subject in bench.subjects or (None,):
            for path in split_files(bench, root, subject).values():
                files += sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
        if bench.name == "gsm8k" and gsm8k_exemplar_file:
            files.append(os.path.join(root, GSM8K_EXEMPLARS))
    return files


def narrowest_mode(paths: list[str]) -> int:
    """The read/write bits every one of ``paths`` grants (symlinks followed), under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    mode = READ_WRITE & ~umask
    for path in paths:
        if os.path.exists(path):
            mode &= os.stat(path).st_mode
    return mode & READ_WRITE


def open_no_looser(path: str, inputs: list[str]):
    """``path`` opened for writing text, its mode no looser than ``narrowest_mode(inputs)`` (also when it
    existed with a looser one)."""
    mode = narrowest_mode(inputs)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    return os.fdopen(fd, "w", encoding="utf-8")
