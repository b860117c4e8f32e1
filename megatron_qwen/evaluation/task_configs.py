"""lm-eval's own task configurations for the report's benchmarks, pointed at the local files under
--data-dir and set to the report's shot counts: a folder of YAML files that lm-eval reads with
`include_path` (tools/evaluate.py) or `lm_eval --include_path` (the same tasks from lm-eval's own CLI).

Each task includes lm-eval's YAML file by its absolute path and overrides only the dataset (local files in
the published format), the shot count and, where our files' fields differ from the hub copy's, the prompt's
field names. HumanEval and MBPP take lm-eval's configuration with its metric replaced by our sandboxed one.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from megatron_qwen.evaluation.benchmarks import MATH_SUBJECTS, Benchmark
from megatron_qwen.evaluation.local_data import split_files

MMLU_PROMPT = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"  # lm-eval's, our columns
LETTER_INDEX = "{{['A', 'B', 'C', 'D'].index(answer)}}"
HERE = "megatron_qwen.evaluation"
# lm-eval's task file each benchmark's tasks include (the few-shot ones: the report's Table 2 settings,
# docs/qwen.md section 10)
LM_EVAL_FILES = {"mmlu": "mmlu/default/mmlu_{subject}.yaml", "ceval": "ceval/ceval-valid_{subject}.yaml",
                 "gsm8k": "gsm8k/gsm8k-cot.yaml", "bbh": "bbh/fewshot/{subject}.yaml",
                 "math": "minerva_math/minerva_math_{math_task}.yaml"}


class Function(str):
    """A value lm-eval imports (`!function module.name`)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda d, v: d.represent_scalar("!function", str(v)))


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _lm_eval_config(relative: str) -> dict:
    """One of lm-eval's task files as data, its !function entries left unresolved (we replace them)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_tasks_dir() / relative, resolve_func=False)


def _sandboxed_metric() -> list[dict]:
    return [{"metric": Function(f"{HERE}.code_tasks.pass_at_1"), "aggregation": "mean", "higher_is_better": True}]


def _dataset(bench: Benchmark, root: str, subject: str | None) -> dict:
    files = split_files(bench, os.path.abspath(root), subject)
    if bench.name in ("mmlu", "ceval"):
        prompt = {"doc_to_text": MMLU_PROMPT, "doc_to_target": LETTER_INDEX} if bench.name == "mmlu" else {}
        return {"custom_dataset": Function(f"{HERE}.local_data.load_csv"), "dataset_name": None, **prompt,
                "dataset_kwargs": {"files": files, "header": bench.name == "ceval"}}
    if bench.name == "math":
        return {"custom_dataset": Function(f"{HERE}.local_data.load_folder"), "training_split": None,
                "dataset_kwargs": {"folder": files["test"]}}
    if bench.name == "mbpp":
        return {"custom_dataset": Function(f"{HERE}.local_data.load_mbpp"), "dataset_name": None,
                "dataset_kwargs": {"path": files["test"]}}
    extra = {"field": "examples"} if bench.name == "bbh" else {}
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files, **extra}}


def _base(bench: Benchmark, subject: str | None, chat: bool) -> dict:
    """What the task starts from: lm-eval's file (by include), with the prompt our --chat mode uses."""
    tasks = lm_eval_tasks_dir()
    if bench.name == "humaneval":
        cfg = _lm_eval_config("humaneval/humaneval.yaml")
        return {**cfg, "metric_list": _sandboxed_metric(), "filter_list": [
            {"name": "create_test", "filter": [
                {"function": "custom", "filter_fn": Function(f"{HERE}.code_tasks.humaneval_programs")}]}]}
    if bench.name == "mbpp":  # the few-shot tasks come from the file's prompt split (task ids 2-4), as published
        cfg = _lm_eval_config("mbpp/mbpp.yaml")
        return {**cfg, "metric_list": _sandboxed_metric(), "fewshot_split": "prompt",
                "fewshot_config": {"sampler": "first_n"}}
    cfg = {"include": str(tasks / LM_EVAL_FILES[bench.name].format(subject=subject,
                                                                    math_task=MATH_SUBJECTS.get(subject)))}
    if chat and bench.name == "gsm8k":  # the chat model gets the question alone as its user turn
        cfg["doc_to_text"] = "{{question}}"
    return cfg


def task_config(bench: Benchmark, root: str, subject: str | None, chat: bool) -> dict:
    return {**_base(bench, subject, chat), **_dataset(bench, root, subject), "task": bench.task_name(subject),
            "num_fewshot": 0 if chat else bench.shots}


def group_config(bench: Benchmark) -> dict:
    """The benchmark's score over its subjects: the mean over all questions, as lm-eval's own groups."""
    metric = bench.metric.split(",")[0]
    return {"group": bench.lm_eval_name, "task": [bench.task_name(s) for s in bench.subjects],
            "aggregate_metric_list": [{"metric": metric, "aggregation": "mean", "weight_by_size": True}],
            "metadata": {"version": 1.0}}


def write_task_configs(benchmarks: list[Benchmark], root: str, out_dir: str, chat: bool) -> str:
    """Writes the configurations of ``benchmarks`` reading ``root`` into ``out_dir``; returns it."""
    os.makedirs(out_dir, exist_ok=True)
    for bench in benchmarks:
        configs = [task_config(bench, root, s, chat) for s in bench.subjects or (None,)]
        if bench.subjects:
            configs.append(group_config(bench))
        for cfg in configs:
            name = cfg.get("group", cfg.get("task"))
            with open(os.path.join(out_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
                yaml.dump(cfg, f, Dumper=_Dumper, allow_unicode=True, sort_keys=False)
    return out_dir
