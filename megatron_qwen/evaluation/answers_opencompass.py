"""Answer rules for the benchmarks Qwen published no script for (MATH, MBPP, BBH), as OpenCompass ran them in
2023, the harness the report's Table 2 names (docs/qwen.md section 10), restated as lm-eval hooks; and the rules
chosen for their --chat runs (docs/evaluation.md).
"""

from __future__ import annotations

import re

# --- BBH ------------------------------------------------------------------------------------------------------
BBH_MULTIPLE_CHOICE = (
    "date_understanding", "disambiguation_qa", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection",
    "snarks", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects")


def _after_answer_is(text: str) -> str:
    """What follows the first "answer is " (the whole text when there is none)."""
    parts = text.split("answer is ")
    return parts[1].strip() if len(parts) > 1 else text


def bbh_letter(text: str) -> str:
    """A multiple-choice answer: the letter of the first "(X)" after "answer is ", else its first capital."""
    rest = _after_answer_is(text)
    match = re.search(r"\(([A-Z])", rest) or re.search(r"([A-Z])", rest)
    return match.group(1) if match else rest


def bbh_free_form(text: str) -> str:
    """A free-form answer: the first line after "answer is ", without a final "."."""
    line = _after_answer_is(text).split("\n")[0]
    return line[:-1] if line.endswith(".") else line


def bbh_letters(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[bbh_letter(r) for r in resp] for resp in resps]


def bbh_free_forms(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[bbh_free_form(r) for r in resp] for resp in resps]


def bbh_letter_target(doc: dict) -> str:
    """A multiple-choice reference read by the same rule: "(B)" -> "B"."""
    return bbh_letter(doc["target"])


# --- MATH -----------------------------------------------------------------------------------------------------
def _minerva_lists() -> tuple[list, list]:
    """Minerva's normalization lists (Lewkowycz et al. 2022, appendix D) as lm-eval ships them, with the entries
    OpenCompass's math_postprocess adds."""
    # deferred: lm-eval's tasks take seconds to import; only MATH's answers need them
    from lm_eval.tasks.minerva_math.utils import REMOVED_EXPRESSIONS, SUBSTITUTIONS

    return [*SUBSTITUTIONS, ("\\le", "<")], [*REMOVED_EXPRESSIONS, "\n", "\r", "\f"]


def _last(pattern: str, text: str) -> str:
    found = re.findall(pattern, text)
    return found[-1] if found else text


def normalize_final_answer(text: str) -> str:
    """Minerva's normalization as OpenCompass applies it: substitutions and unit words removed, TeX wrappers
    unwrapped, then the last "finalansweris", boxed and $...$ span kept, shorthand fractions and roots spelled
    out, thousands commas of a plain number dropped."""
    substitutions, removed = _minerva_lists()
    for before, after in substitutions:
        text = text.replace(before, after)
    for expr in removed:
        text = text.replace(expr, "")
    for wrapper in ("text", "textbf", "overline"):
        text = re.sub(rf"(\\{wrapper}\{{)(.*?)(\}})", r"\2", text)
    text = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", text)
    text = _last(r"\$(.*?)\$", _last(r"oxed\{(.*?)\}", _last(r"finalansweris(.*)", text))).strip()
    if "rac" in text and "\\frac" not in text:
        text = text.replace("rac", "\\frac")
    text = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", text)
    text = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", text).replace("$", "")
    return text.replace(",", "") if text.replace(",", "").isdigit() else text


def math_final_answer(text: str) -> str:
    """The first "."-separated piece that mentions a final answer, normalized (else the first piece)."""
    pieces = text.split(".")
    return normalize_final_answer(next((p for p in pieces if "final answer" in p.lower()), pieces[0]))


def math_answers(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[math_final_answer(r) for r in resp] for resp in resps]


def math_chat_answers(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """--chat (our choice, no Qwen script): the reply's last \\boxed{} if it has one, else the rule above."""
    # deferred: lm-eval's tasks take seconds to import; only MATH's answers need them
    from lm_eval.tasks.hendrycks_math.utils import last_boxed_only_string, remove_boxed

    def one(reply: str) -> str:
        boxed = last_boxed_only_string(reply)
        return remove_boxed(boxed) if boxed else math_final_answer(reply)

    return [[one(r.strip()) for r in resp] for resp in resps]


def math_reference(doc: dict) -> str:
    """The solution's last \\boxed{} content."""
    # deferred: lm-eval's tasks take seconds to import; only MATH's answers need them
    from lm_eval.tasks.hendrycks_math.utils import last_boxed_only_string, remove_boxed

    return remove_boxed(last_boxed_only_string(doc["solution"]))


def math_equivalent(references: list[str], predictions: list[str]) -> float:
    """Hendrycks' equivalence (strip_string on both sides), as OpenCompass's MATHEvaluator."""
    # deferred: lm-eval's tasks take seconds to import; only MATH's answers need them
    from lm_eval.tasks.hendrycks_math.utils import is_equiv

    return float(is_equiv(predictions[0], references[0]))


# --- MBPP -----------------------------------------------------------------------------------------------------
def mbpp_code(text: str) -> str:
    """The program between "[BEGIN]" and the first "[DONE]" (either may lack its brackets), without the quotes
    the exemplars put around their code."""
    text = text.strip()
    done = re.search(r"('\s*|)(\[DONE\]|DONE)", text)
    text = text[:done.start()] if done else text
    begin = re.search(r"(\[BEGIN\]|BEGIN)('\s*|)", text)
    text = (text[begin.end():] if begin else text).strip()
    text = text[1:] if text.startswith("'") else text
    return text[:-1] if text.endswith("'") else text


def mbpp_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The extracted code; the task's asserts follow it as the reference (code_tasks.pass_at_1)."""
    return [[mbpp_code(r) for r in resp] for resp in resps]


def mbpp_chat_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """--chat (our choice): the reply's first fenced code block if it has one, else the rule above."""
    def code(reply: str) -> str:
        fenced = re.search(r"```(?:[Pp]ython)?\n(.*?)```", reply, re.DOTALL)
        return fenced.group(1) if fenced else mbpp_code(reply)

    return [[code(r.strip()) for r in resp] for resp in resps]
