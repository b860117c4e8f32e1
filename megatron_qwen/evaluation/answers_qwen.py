"""The answer rules of Qwen's own evaluation scripts (the eval/ folder of QwenLM/Qwen; docs/evaluation.md puts
each beside its script), restated as lm-eval hooks: filters (``resps, docs -> resps``), targets (``doc -> str``)
and metrics (``references, predictions -> float``) that the task configurations of protocol_qwen.py and
protocol_qwen_chat.py name with ``!function``.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap

from thefuzz import process

INVALID = "[invalid]"
LETTERS = ("A", "B", "C", "D")
GSM8K_GOLD = re.compile(r"#### (-?[0-9.,]+)")
# a number as written in a reply: a sign, digits (thousands commas allowed) and a decimal part, or ".5"
NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")


def _literal(text: str):
    """The number a Python literal spells, as the scripts' eval() reads it (None when eval would raise: "007")."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _canonical(value) -> str:
    if value is None:
        return INVALID
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- GSM8K, base model (evaluate_gsm8k.py) -------------------------------------------------------------------
def gsm8k_gold(doc: dict) -> str:
    """The reference: the number after "#### ", commas dropped, read as a Python literal."""
    match = GSM8K_GOLD.search(doc["answer"])
    return _canonical(_literal(match.group(1).strip().replace(",", ""))) if match else INVALID


def gsm8k_last_integer(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The completion's last run of digits (the completion is already cut at <|endoftext|>, a blank line and
    "Question:" by the task's stop strings, as the script's decode() cuts it)."""
    def last(text: str) -> str:
        digits = re.findall(r"\d+", text)
        return _canonical(_literal(digits[-1])) if digits else INVALID

    return [[last(r) for r in resp] for resp in resps]


# --- GSM8K, chat model (evaluate_chat_gsm8k.py) --------------------------------------------------------------
def last_number(text: str) -> str:
    """The last number of the text, commas and a plus sign dropped ("" when there is none)."""
    found = NUMBER.findall(text)
    return found[-1].replace(",", "").replace("+", "") if found else ""


def gsm8k_chat_answer(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[last_number(r.strip()) for r in resp] for resp in resps]


def gsm8k_chat_gold(doc: dict) -> str:
    return last_number(doc["answer"])


def numbers_equal(references: list[str], predictions: list[str]) -> float:
    """1.0 when both read as numbers within 1e-4 of each other, as the chat script's number_equal()."""
    gold, pred = (_literal(str(s)) for s in (references[0], predictions[0]))
    return float(gold is not None and pred is not None and math.isclose(gold, pred, rel_tol=0, abs_tol=1e-4))


# --- MMLU and C-Eval, chat model (evaluate_chat_mmlu.py, evaluate_chat_ceval.py) -----------------------------
def _fuzzy_letter(reply: str, options: list[str]) -> str:
    """The option whose text is closest to the reply (thefuzz's default scorer, as the scripts' last resort)."""
    best = process.extractOne(reply, options)[0]
    return LETTERS[options.index(best)]


def _options_to_letters(reply: str, doc: dict, ignore_case: bool, strip: str) -> str:
    """Each option's text in the reply replaced by its letter, the longest option first."""
    for letter in sorted(LETTERS, key=lambda k: len(doc[k]), reverse=True):
        text = doc[letter].rstrip(strip)
        reply = re.sub(re.escape(text), letter, reply, flags=re.IGNORECASE) if ignore_case else reply.replace(text,
                                                                                                           letter)
    return reply


MMLU_RULES = (
    # "the answer is B", "choice: B", "I choose B", unless negated ("the answer is not ...")
    re.compile(r"(?:[Cc]hoose|(?:[Aa]nswer|[Cc]hoice)(?![^ABCD]{0,20}?(?:n't|not))[^ABCD]{0,10}?\b(?:|is|:|be))\b"
               r"[^ABCD]{0,20}?\b([ABCD])\b"),
    # "B is correct", "B is right", unless negated
    re.compile(r"\b([ABCD])\b(?![^ABCD]{0,8}?(?:n't|not)[^ABCD]{0,5}?(?:correct|right))[^ABCD]{0,10}?"
               r"\b(?:correct|right)\b"),
    re.compile(r"^([ABCD])(?:[.,:]|$)"),  # the reply is the letter
    re.compile(r"(?<![a-zA-Z])([ABCD])(?![a-zA-Z=])"),  # the first letter standing alone
)
CEVAL_RULES = (
    # "答案是B", "选项为B", "应该选B", unless negated (不/非)
    re.compile(r"(?:(?:选|选择|选定)[：:]?\s*|(?:答案|选项)(?![^ABCD]{0,10}?(?:不|非)[^ABCD]{0,10}?(?:是|选|为|：|:|】))"
               r"[^ABCD]{0,10}?(?:是|选|为|：|:|】)[^ABCD]{0,10}?)([ABCD])(?:选项)?(?:\)|。|\.|，|,|．|、|[ABCD]|$|：|:|）)"),
    # "B选项正确", "B符合题意", unless negated
    re.compile(r"([ABCD])(?:选?项)?(?![^ABCD]{0,4}?(?:不|非)[^ABCD]{0,4}?(?:正确|对[的，。：]|符合))[^ABCD]{0,4}?"
               r"(?:正确|对[的，。：]|符合)"),
    re.compile(r"^[(（]?([ABCD])(?:。|\)|）|\.|，|,|．|：|:|$)"),  # the reply is the letter
    re.compile(r"(?<![a-zA-Z])([ABCD])(?![a-zA-Z=])"),  # the first letter standing alone
)


def _first_rule(reply: str, rules: tuple[re.Pattern, ...], doc: dict) -> str:
    for rule in rules:
        match = rule.search(reply)
        if match:
            return match.group(1)
    return _fuzzy_letter(reply, [doc[k] for k in LETTERS])


def mmlu_chat_choice(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The letter of the reply: options' texts become letters (case ignored, a final "." dropped), then the first
    of MMLU_RULES that matches, else the option closest to the reply."""
    return [[_first_rule(_options_to_letters(r.strip(), doc, True, "."), MMLU_RULES, doc) for r in resp]
            for resp, doc in zip(resps, docs)]


def _ceval_question_parts(reply: str, question: str) -> str:
    """The question's last sentence echoed in the reply: its part before a blank ("_") becomes "答案是", its part
    after the blank is dropped (each only when longer than 4 characters)."""
    parts = question.rstrip("。").split("。")[-1].split("_")
    if len(parts[0].strip()) > 4:
        reply = reply.replace(parts[0], "答案是")
    if len(parts[-1].strip()) > 4:
        reply = reply.replace(parts[-1], "")
    return reply


def ceval_chat_choice(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """C-Eval's: the question's echo removed, options' texts become letters, then CEVAL_RULES, then the closest
    option."""
    def one(reply: str, doc: dict) -> str:
        reply = _options_to_letters(_ceval_question_parts(reply.strip(), doc["question"]), doc, False, "。")
        return _first_rule(reply, CEVAL_RULES, doc)

    return [[one(r, doc) for r in resp] for resp, doc in zip(resps, docs)]


# --- HumanEval, chat model (evaluate_chat_humaneval.py) ------------------------------------------------------
def humaneval_chat_prompt(doc: dict) -> str:
    """The user turn: the signature and the docstring's lines (stripped), then the prompt itself."""
    signature = re.search(rf"def\s+({re.escape(doc['entry_point'])}.*?):\s*\n", doc["prompt"]).group(1)
    docstring = re.search(r"(?:\"\"\"|''')(.*?)(?:\"\"\"|''')", doc["prompt"], re.DOTALL).group(1)
    description = "\n".join(line.strip() for line in docstring.split("\n"))
    return f"Write a Python function `{signature}` to solve the following problem:\n{description}\n{doc['prompt']}"


def humaneval_chat_body(reply: str, entry_point: str) -> str:
    """The body of the entry point's function in the reply: from a fenced block that defines it, else from the
    reply's own definition of it, else from any definition; a reply with none is taken as the body itself."""
    fenced = re.search(rf"```(?:[Pp]ython\n)?.*?def\s+{re.escape(entry_point)}.*?:\n(.*?)\n```", reply, re.DOTALL)
    if fenced:
        return fenced.group(1)
    for head in (rf"def\s+{re.escape(entry_point)}", r"def"):
        defined = re.search(head + r".*?:\n(.*?)(?:\n(?!\n*(?:  |\t))|$)", reply, re.DOTALL)
        if defined:
            return defined.group(1)
    return textwrap.indent(reply, " " * 4)


def humaneval_chat_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[doc["prompt"] + humaneval_chat_body(r.strip(), doc["entry_point"]) for r in resp]
            for resp, doc in zip(resps, docs)]
