"""--protocol qwen, base models: each benchmark prompted and scored as Qwen measured it, as lm-eval task
configurations (docs/evaluation.md shows one rendered prompt of each beside its source).

- MMLU, C-Eval, GSM8K, HumanEval follow Qwen's own scripts (eval/evaluate_{mmlu,ceval,gsm8k,humaneval}.py of
  QwenLM/Qwen): their prompts, few-shot examples, answer tokens or extraction, and aggregation.
- MATH, MBPP, BBH, for which Qwen published no script, follow the 2023 OpenCompass configurations the report's
  Table 2 points to (docs/qwen.md section 10): math_gen_265cce, mbpp_gen_1e1056, bbh_gen_5b92b0, each prompt as
  OpenCompass joins its rounds for a base model (with "\\n"), each answer rule in answers_opencompass.py.
Generation is greedy up to 512 new tokens (MAX_NEW_TOKENS); lm-eval stops it at the task's stop strings and cuts
the completion at the first of them, which is where the scripts cut it.
"""

from __future__ import annotations

from megatron_qwen.evaluation.answers_opencompass import BBH_MULTIPLE_CHOICE
from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.lm_eval_config import (
    FILTER,
    Function,
    answer_filter,
    dataset,
    greedy,
    literal,
    lm_eval_task,
    metric,
    ours,
    sandboxed_pass_at_1,
)
from megatron_qwen.evaluation.local_data import gsm8k_exemplars

OPTIONS = "\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}"
HEADLINE = {"mmlu": "acc,none", "ceval": "acc,none", "gsm8k": f"exact_match,{FILTER}",
            "math": f"math_equivalent,{FILTER}", "humaneval": f"pass_at_1,{FILTER}", "mbpp": f"pass_at_1,{FILTER}",
            "bbh": f"exact_match,{FILTER}"}
# evaluate_ceval.py averages its subjects' accuracies; OpenCompass's bbh summary averages its 27 tasks'
SUBJECT_MEAN = frozenset({"ceval", "bbh"})
MBPP_TASK = "You are an expert Python programmer, and here is your task: {{text}} Your code should pass these " \
            "tests:\n\n {{test_list | join('\\n')}}  \n"
ASSERTS = "{{test_list | join('\\n')}}"


def first_n(split: str | None = None, **formatting) -> dict:
    """The first few-shot examples in file order (the scripts take the dev files' first rows)."""
    return {"sampler": "first_n", **({"split": split} if split else {}), **formatting}


def _letter_choice(test_split: str, doc_to_text: str, target_delimiter: str) -> dict:
    """The dev file's first rows as the examples, then the likelier of the letters as the next token."""
    return {"output_type": "multiple_choice", "test_split": test_split, "fewshot_split": "dev",
            "fewshot_config": first_n(), "doc_to_text": doc_to_text, "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}", "target_delimiter": target_delimiter,
            "fewshot_delimiter": "\n\n", "metric_list": metric("acc")}


def mmlu(subject: str) -> dict:
    """evaluate_mmlu.py: a header naming the subject, 5 dev examples, and the next token among " A".." D"."""
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return {**_letter_choice("test", "Question: {{question}}" + OPTIONS + "\nAnswer:", " "),
            "description": literal(header)}


def ceval() -> dict:
    """evaluate_ceval.py: no header, 5 dev examples, and the next token among "A".."D" (no space)."""
    return _letter_choice("val", "问题：{{question}}" + OPTIONS + "\n答案：", "")


def gsm8k(root: str) -> dict:
    """evaluate_gsm8k.py: its exemplar file, then the question; cut at <|endoftext|>, a blank line or "Question:";
    the last integer of what is left."""
    return {"output_type": "generate_until", "test_split": "test", "description": literal(gsm8k_exemplars(root)),
            "doc_to_text": "\nQuestion: {{question}}\nLet's think step by step\n",
            "doc_to_target": ours("answers_qwen.gsm8k_gold"),
            "generation_kwargs": greedy(["<|endoftext|>", "\n\n", "Question:"]),
            "filter_list": answer_filter("answers_qwen.gsm8k_last_integer"), "metric_list": metric("exact_match")}


def humaneval() -> dict:
    """evaluate_humaneval.py: the prompt as it is; cut at <|endoftext|>, a blank line or "def "; the prompt and
    the completion run with the tests."""
    cfg = lm_eval_task("humaneval/humaneval.yaml")
    return {**cfg, "generation_kwargs": greedy(["<|endoftext|>", "\n\n", "def "]),
            "filter_list": answer_filter("code_tasks.humaneval_programs"), "metric_list": sandboxed_pass_at_1()}


def math() -> dict:
    """math_gen_265cce: Minerva's 4 exemplars as "Problem:/Solution:" rounds; the first sentence mentioning a
    final answer, normalized, against the solution's boxed answer by Hendrycks' equivalence."""
    exemplars = Function("lm_eval.tasks.minerva_math.utils.list_fewshot_samples")  # lm-eval's copy of Minerva's
    return {"output_type": "generate_until", "test_split": "test", "doc_to_text": "Problem:\n{{problem}}\nSolution:\n",
            "fewshot_config": first_n(samples=exemplars, doc_to_text="Problem:\n{{problem}}\nSolution:",
                                      doc_to_target="{{solution}}\n", target_delimiter="\n", fewshot_delimiter="\n"),
            "doc_to_target": ours("answers_opencompass.math_reference"),
            "generation_kwargs": greedy(["\n\nProblem:"]),
            "filter_list": answer_filter("answers_opencompass.math_answers"),
            "metric_list": metric(ours("answers_opencompass.math_equivalent"))}


def mbpp() -> dict:
    """mbpp_gen_1e1056: tasks 2-4 as "[BEGIN] 'code' [DONE]" rounds; the code between [BEGIN] and [DONE] runs
    with the task's three asserts."""
    return {"output_type": "generate_until", "test_split": "test", "fewshot_split": "prompt",
            "fewshot_config": first_n(doc_to_text=MBPP_TASK, doc_to_target="[BEGIN]\n '{{code}}' \n[DONE] \n\n ",
                                      target_delimiter="\n", fewshot_delimiter="\n"),
            "doc_to_text": MBPP_TASK + "\n[BEGIN]\n", "doc_to_target": ASSERTS, "generation_kwargs": greedy(["[DONE]"]),
            "filter_list": answer_filter("answers_opencompass.mbpp_programs"), "metric_list": sandboxed_pass_at_1()}


def bbh(subject: str) -> dict:
    """bbh_gen_5b92b0: "Follow the given examples..." and the task's 3 chain-of-thought exemplars (lm-eval's copy of
    BIG-Bench-Hard's cot-prompts); the answer after "answer is "."""
    cot = lm_eval_task(f"bbh/cot_fewshot/{subject}.yaml")
    choice = subject in BBH_MULTIPLE_CHOICE
    return {"output_type": "generate_until", "test_split": "test",
            "description": literal("Follow the given examples and answer the question.\n" + cot["description"]),
            "fewshot_config": first_n(samples=cot["fewshot_config"]["samples"], doc_to_target="{{target}}"),
            "doc_to_text": "Q: {{input}}\nA: Let's think step by step.", "target_delimiter": "\n",
            "fewshot_delimiter": "\n\n",
            "doc_to_target": ours("answers_opencompass.bbh_letter_target") if choice else "{{target}}",
            "generation_kwargs": greedy(["\n\nQ:"]),
            "filter_list": answer_filter("answers_opencompass.bbh_letters" if choice
                                         else "answers_opencompass.bbh_free_forms"),
            "metric_list": metric("exact_match")}


def task_config(bench: Benchmark, root: str, subject: str | None) -> dict:
    build = {"mmlu": lambda: mmlu(subject), "ceval": ceval, "gsm8k": lambda: gsm8k(root), "humaneval": humaneval,
             "math": math, "mbpp": mbpp, "bbh": lambda: bbh(subject)}[bench.name]
    # GSM8K's 8 exemplars are Qwen's file, the description: no example drawn by lm-eval
    return {**build(), **dataset(bench, root, subject, as_pandas_reads=True), "task": bench.task_name(subject),
            "num_fewshot": 0 if bench.name == "gsm8k" else bench.shots}
