"""Where each benchmark's files lie under --data-dir, in the format its authors publish them, and how
lm-eval and curation's decontamination read them.

    mmlu/dev/<subject>_dev.csv, mmlu/test/<subject>_test.csv   Hendrycks' data.tar (no header:
                                                                 question,A,B,C,D,answer)
    ceval/dev/<subject>_dev.csv, ceval/val/<subject>_val.csv    ceval-exam.zip (header id,question,A,B,C,D,answer)
    gsm8k/test.jsonl                                             openai/grade-school-math (question, answer)
    gsm8k/gsm8k_prompt.txt                                       QwenLM/Qwen's eval/gsm8k_prompt.txt (--protocol qwen)
    math/test/<subject>/<n>.json                                 Hendrycks' MATH.tar's MATH/test (problem, solution)
    humaneval/HumanEval.jsonl[.gz]                               openai/human-eval (task_id, prompt, test, entry_point)
    mbpp/mbpp.jsonl                                              google-research/mbpp (task_id, text, code, test_list)
    bbh/<task>.json                                              suzgun/BIG-Bench-Hard's bbh/ ({"examples": [...]})
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
from collections.abc import Iterator

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation.benchmarks import BENCHMARKS, Benchmark

MMLU_COLUMNS = ["question", "A", "B", "C", "D", "answer"]
GSM8K_EXEMPLARS = os.path.join("gsm8k", "gsm8k_prompt.txt")
QWEN_REPOSITORY = "https://github.com/QwenLM/Qwen"
MBPP_TEST_IDS, MBPP_PROMPT_IDS = range(11, 511), range(2, 5)  # the paper's test split; its 3-shot prompt tasks
REQUIRED_FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution"),
                   "humaneval": ("task_id", "prompt", "test", "entry_point"),
                   "mbpp": ("task_id", "text", "code", "test_list"), "bbh": ("input", "target")}


def _humaneval_file(root: str) -> str:
    plain = os.path.join(root, "humaneval", "HumanEval.jsonl")
    return plain if os.path.isfile(plain) else plain + ".gz"


def split_files(bench: Benchmark, root: str, subject: str | None) -> dict[str, str]:
    """The files of one lm-eval task: {split: path}."""
    if bench.name == "mmlu":
        return {"test": f"{root}/mmlu/test/{subject}_test.csv", "dev": f"{root}/mmlu/dev/{subject}_dev.csv"}
    if bench.name == "ceval":
        return {"val": f"{root}/ceval/val/{subject}_val.csv", "dev": f"{root}/ceval/dev/{subject}_dev.csv"}
    if bench.name == "math":
        return {"test": f"{root}/math/test/{subject}"}
    if bench.name == "bbh":
        return {"test": f"{root}/bbh/{subject}.json"}
    if bench.name == "humaneval":
        return {"test": _humaneval_file(root)}
    if bench.name == "mbpp":
        return {"test": f"{root}/mbpp/mbpp.jsonl"}
    return {"test": f"{root}/gsm8k/test.jsonl"}


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _json_records(path: str) -> Iterator[dict]:
    """Records of a jsonl file, a BBH task file ({"examples": [...]}) or a MATH folder (one object a file)."""
    if os.path.isdir(path):
        for file in sorted(glob.glob(os.path.join(path, "*.json"))):
            with open(file, encoding="utf-8") as f:
                yield json.load(f)
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            yield from json.load(f)["examples"]
    else:
        with _open_text(path) as f:
            yield from (json.loads(line) for line in f if line.strip())


def _csv_records(path: str, header: bool) -> Iterator[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        columns = next(rows) if header else MMLU_COLUMNS
        yield from (dict(zip(columns, row)) for row in rows)


def records(bench: Benchmark, path: str) -> Iterator[dict]:
    """The records of one of ``bench``'s files."""
    if bench.name in ("mmlu", "ceval"):
        return _csv_records(path, header=bench.name == "ceval")
    return _json_records(path)


def _check_first_record(bench: Benchmark, path: str) -> None:
    what = f"--data-dir: task {bench.name}: {path}"
    try:
        first = next(records(bench, path), None)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{what} is not in the benchmark's published format ({type(e).__name__}: {e}); "
                          "see docs/evaluation.md") from None
    if first is None:
        raise ConfigError(f"{what} holds no record")
    need = MMLU_COLUMNS if bench.name in ("mmlu", "ceval") else REQUIRED_FIELDS[bench.name]
    missing = [k for k in need if not isinstance(first, dict) or first.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{what}: its first record lacks {', '.join(missing)}; expected the published format "
                          "(docs/evaluation.md)")


def gsm8k_exemplars(root: str) -> str:
    """Qwen's 8-shot GSM8K exemplars, as its evaluate_gsm8k.py reads them."""
    path = os.path.join(root, GSM8K_EXEMPLARS)
    if not os.path.isfile(path):
        raise ConfigError(f"--data-dir {root}: task gsm8k (--protocol qwen) expects {GSM8K_EXEMPLARS}, which is "
                          f"missing: it is eval/gsm8k_prompt.txt of {QWEN_REPOSITORY}, Qwen's 8 exemplars "
                          "(docs/evaluation.md)")
    with open(path, encoding="utf-8") as f:
        return f.read()


def check_data(benchmarks: list[Benchmark], root: str, gsm8k_exemplar_file: bool = False) -> None:
    """One line for the first missing or malformed file, before any model is loaded. ``gsm8k_exemplar_file``:
    GSM8K needs Qwen's exemplar file too (its base-model protocol)."""
    if not os.path.isdir(root):
        raise ConfigError(f"--data-dir {root} does not exist; it holds one folder per benchmark (docs/evaluation.md)")
    for bench in benchmarks:
        for subject in bench.subjects or (None,):
            for path in split_files(bench, root, subject).values():
                if not os.path.exists(path) or (os.path.isdir(path) and not glob.glob(os.path.join(path, "*.json"))):
                    shown = os.path.relpath(path, root) + ("/*.json" if bench.name == "math" else "")
                    raise ConfigError(f"--data-dir {root}: task {bench.name} expects {shown}, which is missing "
                                      "(layouts: docs/evaluation.md)")
                _check_first_record(bench, path)
        if gsm8k_exemplar_file and bench.name == "gsm8k":
            gsm8k_exemplars(root)


def load_folder(folder: str, **_) -> dict:
    """lm-eval's custom_dataset for a MATH subject folder (lm-eval passes its metadata too)."""
    # deferred: datasets takes seconds to import; only the sets read through it need it
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(_json_records(folder)))})


def _pandas_records(path: str, header: bool) -> list[dict]:
    """The rows as Qwen's scripts see them: pandas.read_csv's typed values printed by str() ("1.50" in a column
    of numbers is "1.5", "None" is "nan")."""
    # deferred: pandas takes a second to import; only the CSV sets need it
    import pandas

    frame = pandas.read_csv(path, **({} if header else {"names": MMLU_COLUMNS}))
    return [{k: str(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def load_csv(files: dict[str, str], header: bool, as_pandas_reads: bool = False, **_) -> dict:
    """lm-eval's custom_dataset for MMLU's and C-Eval's CSV files: every field kept as the text written (a choice
    such as "None" or "1.50" stays as it is), or ``as_pandas_reads`` (_pandas_records)."""
    # deferred: datasets takes seconds to import; only the sets read through it need it
    import datasets

    read = _pandas_records if as_pandas_reads else (lambda path, h: list(_csv_records(path, h)))
    return datasets.DatasetDict({split: datasets.Dataset.from_list(read(path, header))
                                 for split, path in files.items()})


def load_mbpp(path: str, **_) -> dict:
    """lm-eval's custom_dataset for mbpp.jsonl: the test split and the 3-shot prompt split, by task id."""
    # deferred: datasets takes seconds to import; only the sets read through it need it
    import datasets

    rows = list(_json_records(path))
    return datasets.DatasetDict({
        "test": datasets.Dataset.from_list([r for r in rows if r["task_id"] in MBPP_TEST_IDS]),
        "prompt": datasets.Dataset.from_list([{**r, "is_fewshot": True} for r in rows
                                              if r["task_id"] in MBPP_PROMPT_IDS])})  # mbpp.yaml's target switch


def iter_benchmark_records(root: str) -> Iterator[tuple[str, dict]]:
    """(benchmark, record) for every benchmark file present under ``root`` (curation's --eval-data)."""
    for bench in BENCHMARKS.values():
        for subject in bench.subjects or (None,):
            for path in split_files(bench, root, subject).values():
                if os.path.exists(path):
                    yield from ((bench.name, r) for r in records(bench, path))


def is_data_dir(path: str) -> bool:
    """Whether ``path`` is laid out as an evaluation --data-dir (a folder with a benchmark's folder)."""
    return os.path.isdir(path) and any(os.path.isdir(os.path.join(path, name)) for name in BENCHMARKS)
