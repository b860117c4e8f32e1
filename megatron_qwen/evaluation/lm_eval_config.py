"""The pieces every protocol's lm-eval task configuration is made of: lm-eval's own task files as data, the
datasets of the local files under --data-dir, greedy generation, filters and metrics named by ``!function``."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.local_data import split_files

HERE = "megatron_qwen.evaluation"
FILTER = "qwen"  # the filter every qwen-protocol task scores through: metric keys read "<metric>,qwen"
MAX_NEW_TOKENS = 512  # max_new_tokens of Qwen's published generation_config.json, which its scripts generate with


class Function(str):
    """A value lm-eval imports (`!function module.name`)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda d, v: d.represent_scalar("!function", str(v)))


def ours(name: str) -> Function:
    """A function of this package, as lm-eval imports it (``answers_qwen.gsm8k_gold``)."""
    return Function(f"{HERE}.{name}")


def dump(config: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(config, f, Dumper=_Dumper, allow_unicode=True, sort_keys=False)


def lm_eval_tasks_dir() -> Path:
    # deferred: lm-eval's tasks take seconds to import; the inputs are checked before
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def lm_eval_task(relative: str) -> dict:
    """One of lm-eval's task files as data, its !function entries left unresolved (we replace them)."""
    # deferred: lm-eval's tasks take seconds to import; the inputs are checked before
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_tasks_dir() / relative, resolve_func=False)


def literal(text: str) -> str:
    """``text`` as a Jinja template that renders it unchanged (lm-eval renders descriptions as templates)."""
    return "{% raw %}" + text + "{% endraw %}"


def greedy(until: list[str], chat: bool = False) -> dict:
    """Greedy generation to MAX_NEW_TOKENS; a chat run also without repetition penalty, as Qwen's chat scripts set
    it (a base run takes the export's generation_config.json, as Qwen's base scripts take the checkpoint's)."""
    return {"until": until, "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS,
            **({"repetition_penalty": 1.0} if chat else {})}


def answer_filter(function: str) -> list[dict]:
    """One filter named FILTER: the custom function ``function`` (of this package) on every response, then the
    first response (there is one: greedy)."""
    return [{"name": FILTER, "filter": [{"function": "custom", "filter_fn": ours(function)},
                                        {"function": "take_first"}]}]


def metric(name: str | Function) -> list[dict]:
    return [{"metric": name, "aggregation": "mean", "higher_is_better": True}]


def sandboxed_pass_at_1() -> list[dict]:
    """pass@1 through our sandbox (lm-eval's code_eval runs model code in-process and reads the hub)."""
    return metric(ours("code_tasks.pass_at_1"))


def dataset(bench: Benchmark, root: str, subject: str | None, as_pandas_reads: bool = False) -> dict:
    """The local files of one task as lm-eval reads them. ``as_pandas_reads``: MMLU's and C-Eval's fields as
    pandas.read_csv types them and str() prints them (Qwen's scripts: 1.50 -> "1.5", None -> "nan"); otherwise
    as written."""
    files = split_files(bench, os.path.abspath(root), subject)
    if bench.name in ("mmlu", "ceval"):
        return {"custom_dataset": ours("local_data.load_csv"), "dataset_name": None,
                "dataset_kwargs": {"files": files, "header": bench.name == "ceval", "as_pandas_reads": as_pandas_reads}}
    if bench.name == "math":
        return {"custom_dataset": ours("local_data.load_folder"), "training_split": None,
                "dataset_kwargs": {"folder": files["test"]}}
    if bench.name == "mbpp":
        return {"custom_dataset": ours("local_data.load_mbpp"), "dataset_name": None,
                "dataset_kwargs": {"path": files["test"]}}
    extra = {"field": "examples"} if bench.name == "bbh" else {}
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files, **extra}}
