"""Step 5: 13-gram decontamination against evaluation sets the user provides.

The index is ours (`EvalNgramIndexer`): each evaluation jsonl file is one benchmark (named by the file, or
by a record's `benchmark` field), and a folder laid out as tools/evaluate.py's --data-dir gives every
benchmark file it holds, read as the evaluation reads it (megatron_qwen/evaluation/local_data.py). Every
13-gram of a record's text (its string fields, and lists of strings, e.g. question, choices and answer,
joined) is hashed. datatrove's own indexer loads benchmarks
through lighteval only. The filter is datatrove's `NGramsDecontFilter`, given our tokens (`text.tokens`,
a Chinese character is one token) and the same hash (xxhash64); it drops a training document sharing any 13-gram
with a benchmark and counts it as `contaminated_<benchmark>`.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.text import ngrams

from megatron_qwen.curate.fuzzy import NO_NORMALIZATION
from megatron_qwen.curate.text import CurationTokenizer, tokens
from megatron_qwen.data.sources import InputError, expand_inputs, parse_block, read_blocks
from megatron_qwen.evaluation.local_data import is_data_dir, iter_benchmark_records

NGRAM = 13


def decont_config(n: int = NGRAM) -> NGramsDecontConfig:
    return NGramsDecontConfig(n_grams=n, find_query_ngrams=True, norm_config=NO_NORMALIZATION)


def ngram_hash(ngram: str) -> int:
    """xxhash64 of the n-gram's UTF-8 (datatrove's own xxhash function takes bytes, its filter passes str)."""
    return xxhash.xxh64_intdigest(ngram.encode())


def record_text(record: dict) -> str:
    """The text of an evaluation record: its string values and lists of strings, in order (but its id and
    benchmark name)."""
    parts = []
    for key, value in record.items():
        if key in ("id", "benchmark"):
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


class EvalNgramIndexer(PipelineStep):
    """Writes `<benchmark>.index.hashes` (the n-gram hashes, in datatrove's index format) for every
    benchmark found in `eval_inputs` (jsonl files, folders or globs)."""

    name = "evaluation n-gram index"
    type = "🦠 - DECONT"

    def __init__(self, eval_inputs: list[str], output_folder: DataFolderLike, n: int = NGRAM):
        super().__init__()
        self.data_dirs = [p for p in eval_inputs if is_data_dir(p)]
        jsonl = [p for p in eval_inputs if p not in self.data_dirs]
        self.files = expand_inputs(jsonl, flag="--eval-data") if jsonl else []
        if not all(f.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")) for f in self.files):
            raise InputError(f"--eval-data {eval_inputs}: evaluation sets must be jsonl files or an evaluation "
                             "--data-dir (docs/evaluation.md)")
        self.output_folder = get_datafolder(output_folder)
        self.config = decont_config(n)

    def _add(self, hashes: dict[str, set[int]], name: str, record: dict) -> None:
        grams = ngrams(tokens(record_text(record)), self.config.n_grams)
        hashes[name].update(ngram_hash(" ".join(g)) for g in grams)
        self.stat_update(f"samples_{name}")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        hashes: dict[str, set[int]] = defaultdict(set)
        for folder in self.data_dirs:
            for name, record in iter_benchmark_records(folder):
                self._add(hashes, name, record)
        for path in self.files:
            default_name = os.path.basename(path).split(".")[0]
            for block in read_blocks(path, []):
                batch = parse_block(block, lambda obj: obj if isinstance(obj, dict) else "not a JSON object")
                if batch.bad:
                    where, reason = batch.bad[0]
                    raise InputError(f"--eval-data {path}: line {where}: {reason}")
                for record in batch.records:
                    self._add(hashes, str(record.get("benchmark", default_name)), record)
        for name, values in hashes.items():
            with self.output_folder.open(f"{name.replace(' ', '_')}.index.hashes", mode="wb") as f:
                f.write(np.array(sorted(values), dtype=self.config.hash_config.np_descr).tobytes())


def decont_filter(index_folder: str, n: int = NGRAM) -> NGramsDecontFilter:
    step = NGramsDecontFilter(index_folder, config=decont_config(n), language=CurationTokenizer())
    step.hash_func = ngram_hash  # the index's hash
    return step
