"""--protocol qwen --chat: chat models measured as Qwen's chat scripts measure them (eval/evaluate_chat_{mmlu,ceval,
gsm8k,humaneval}.py of QwenLM/Qwen): zero-shot, the instruction prompt as the user turn after the default system
turn (the export's chat template adds it: these tasks carry no description that would replace it), greedy
generation without repetition penalty, and the answer read out of the reply by the scripts' rules
(answers_qwen.py). Qwen published no chat script for MATH, MBPP or BBH; our choices (docs/evaluation.md): the
problem alone (MATH, its last \\boxed{} answer), MBPP's task text and asserts (the reply's code block), BBH's task
instruction with "Let's think step by step." (the answer after "answer is ").
"""

from __future__ import annotations

from megatron_qwen.evaluation import lm_eval_config as lec
from megatron_qwen.evaluation.answers_opencompass import BBH_MULTIPLE_CHOICE
from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.lm_eval_config import FILTER, metric, ours

OPTIONS = "A. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n"
MMLU_INSTRUCTION = ("The following is a multiple-choice question. Please choose the most suitable one among A, B, C "
                    "and D as the answer to this question.\n\n")
HEADLINE = {"mmlu": f"exact_match,{FILTER}", "ceval": f"exact_match,{FILTER}", "gsm8k": f"numbers_equal,{FILTER}",
            "math": f"math_equivalent,{FILTER}", "humaneval": f"pass_at_1,{FILTER}", "mbpp": f"pass_at_1,{FILTER}",
            "bbh": f"exact_match,{FILTER}"}
SUBJECT_MEAN = frozenset({"ceval", "bbh"})
STOP = ["<|im_end|>", "<|im_start|>"]  # the chat turn's end, as model.chat() stops


def _generated(test_split: str, doc_to_text, target, answer: str, score) -> dict:
    return {"output_type": "generate_until", "test_split": test_split, "doc_to_text": doc_to_text,
            "doc_to_target": target, "generation_kwargs": lec.greedy(STOP, chat=True),
            "filter_list": lec.answer_filter(answer), "metric_list": score}


def task_config(bench: Benchmark, root: str, subject: str | None) -> dict:
    name = bench.name
    if name == "mmlu":
        cfg = _generated("test", MMLU_INSTRUCTION + "{{question}}\n" + OPTIONS, "{{answer}}",
                         "answers_qwen.mmlu_chat_choice", metric("exact_match"))
    elif name == "ceval":
        cfg = _generated("val", "{{question}}\n\n" + OPTIONS, "{{answer}}", "answers_qwen.ceval_chat_choice",
                         metric("exact_match"))
    elif name == "gsm8k":
        cfg = _generated("test", "{{question}}", ours("answers_qwen.gsm8k_chat_gold"), "answers_qwen.gsm8k_chat_answer",
                         metric(ours("answers_qwen.numbers_equal")))
    elif name == "humaneval":
        cfg = {**lec.lm_eval_task("humaneval/humaneval.yaml"), **_generated(
            "test", ours("answers_qwen.humaneval_chat_prompt"), "{{test}}\ncheck({{entry_point}})",
            "answers_qwen.humaneval_chat_programs", lec.sandboxed_pass_at_1())}
    elif name == "math":
        cfg = _generated("test", "{{problem}}", ours("answers_opencompass.math_reference"),
                         "answers_opencompass.math_chat_answers", metric(ours("answers_opencompass.math_equivalent")))
    elif name == "mbpp":
        cfg = _generated("test", "You are an expert Python programmer, and here is your task: {{text}} Your code "
                         "should pass these tests:\n\n{{test_list | join('\\n')}}", "{{test_list | join('\\n')}}",
                         "answers_opencompass.mbpp_chat_programs", lec.sandboxed_pass_at_1())
    else:
        choice = subject in BBH_MULTIPLE_CHOICE
        instruction = lec.literal(lec.lm_eval_task(f"bbh/cot_fewshot/{subject}.yaml")["description"])
        cfg = _generated("test", instruction + "Q: {{input}}\nA: Let's think step by step.",
                         ours("answers_opencompass.bbh_letter_target") if choice else "{{target}}",
                         "answers_opencompass.bbh_letters" if choice else "answers_opencompass.bbh_free_forms",
                         metric("exact_match"))
    return {**cfg, **lec.dataset(bench, root, subject, as_pandas_reads=True), "task": bench.task_name(subject),
            "num_fewshot": 0}
