"""--protocol lm-eval: lm-evaluation-harness's own task configurations, pointed at the local files under
--data-dir and set to the report's shot counts, fixed where they score a correct answer wrong (BBH).

Each task includes lm-eval's YAML file by its absolute path and overrides only the dataset (local files in the
published format), the shot count and, where our files' fields differ from the hub copy's, the prompt's field
names. HumanEval and MBPP take lm-eval's configuration with its metric replaced by our sandboxed one. BBH's
few-shot tasks compare the raw completion with the target, so " (B)", the exemplars' own format after "A:", never
equals "(B)" (lm-eval's PR #2502 discusses it): here the answer is read out of the completion first.
"""

from __future__ import annotations

from megatron_qwen.evaluation.answers_opencompass import BBH_MULTIPLE_CHOICE
from megatron_qwen.evaluation.benchmarks import MATH_SUBJECTS, Benchmark
from megatron_qwen.evaluation.lm_eval_config import dataset, lm_eval_task, lm_eval_tasks_dir, ours, sandboxed_pass_at_1

MMLU_PROMPT = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"  # lm-eval's, our columns
LETTER_INDEX = "{{['A', 'B', 'C', 'D'].index(answer)}}"
# lm-eval's task file each benchmark's tasks include (the few-shot ones: the report's Table 2 settings,
# docs/qwen.md section 10)
LM_EVAL_FILES = {"mmlu": "mmlu/default/mmlu_{subject}.yaml", "ceval": "ceval/ceval-valid_{subject}.yaml",
                 "gsm8k": "gsm8k/gsm8k-cot.yaml", "bbh": "bbh/fewshot/{subject}.yaml",
                 "math": "minerva_math/minerva_math_{math_task}.yaml"}
# the score of each benchmark: lm-eval's metric key (its groups average over all questions)
HEADLINE = {"mmlu": "acc,none", "ceval": "acc,none", "gsm8k": "exact_match,flexible-extract",
            "math": "exact_match,none", "humaneval": "pass_at_1,create_test", "mbpp": "pass_at_1,none",
            "bbh": "exact_match,answer"}
SUBJECT_MEAN = frozenset()


def bbh_answer_filter(subject: str) -> list[dict]:
    """The answer in the target's form: the first "(X)" of a multiple-choice completion, the completion without
    surrounding whitespace otherwise."""
    if subject in BBH_MULTIPLE_CHOICE:
        first = [{"function": "regex", "regex_pattern": r"(\([A-Z]\))", "group_select": 0}]
    else:
        first = [{"function": "remove_whitespace"}]
    return [{"name": "answer", "filter": [*first, {"function": "take_first"}]}]


def _base(bench: Benchmark, subject: str | None, chat: bool) -> dict:
    """What the task starts from: lm-eval's file (by include), with the prompt our --chat mode uses."""
    if bench.name == "humaneval":
        cfg = lm_eval_task("humaneval/humaneval.yaml")
        return {**cfg, "metric_list": sandboxed_pass_at_1(), "filter_list": [
            {"name": "create_test", "filter": [
                {"function": "custom", "filter_fn": ours("code_tasks.humaneval_programs")}]}]}
    if bench.name == "mbpp":  # the few-shot tasks come from the file's prompt split (task ids 2-4), as published
        cfg = lm_eval_task("mbpp/mbpp.yaml")
        return {**cfg, "metric_list": sandboxed_pass_at_1(), "fewshot_split": "prompt",
                "fewshot_config": {"sampler": "first_n"}}
    cfg = {"include": str(lm_eval_tasks_dir() / LM_EVAL_FILES[bench.name].format(
        subject=subject, math_task=MATH_SUBJECTS.get(subject)))}
    if bench.name == "mmlu":
        cfg.update(doc_to_text=MMLU_PROMPT, doc_to_target=LETTER_INDEX)
    if bench.name == "bbh":
        cfg["filter_list"] = bbh_answer_filter(subject)
    if chat and bench.name == "gsm8k":  # the chat model gets the question alone as its user turn
        cfg["doc_to_text"] = "{{question}}"
    return cfg


def task_config(bench: Benchmark, root: str, subject: str | None, chat: bool) -> dict:
    return {**_base(bench, subject, chat), **dataset(bench, root, subject), "task": bench.task_name(subject),
            "num_fewshot": 0 if chat else bench.shots}
