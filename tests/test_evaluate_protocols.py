"""--protocol qwen (base and --chat) and --protocol lm-eval on models whose greedy replies are fixed in advance
(tests/evaluate_fixtures.py): each logged prompt equals one built by hand from the published format it follows,
and each score equals what the answer key gives for the known reply. Then the answer rules alone, on replies
written here.
"""

import json
import os
from pathlib import Path

import pytest
from evaluate_fixtures import (
    run_evaluate,
    samples,
    save_model,
    successor_model,
    write_bbh,
    write_choice_csvs,
    write_jsonl,
)

pytest.importorskip("lm_eval")

SNARKS = [("Which is sarcastic?\nOptions:\n(A) x\n(B) y", "(B)"), ("Which is ironic?\nOptions:\n(A) x\n(B) y", "(A)")]
FREE_FORM = [("not ( True ) is", "(B)")]  # one question: the subjects differ in size
MBPP_TASKS = [{"task_id": i, "text": f"Write a function adding numbers ({i}).",
               "code": "def add(*v):\r\n  return sum(v)",
               "test_list": [f"assert add({i}, 1) == {i + 1}", "assert add() == 0", "assert add(2, 2) == 4"],
               "test_setup_code": "", "challenge_test_list": []} for i in range(1, 13)]
MBPP_TASKS[11]["test_list"][0] = "assert add(1, 1) == 3"  # task 12 fails its first assert
MATH_PROBLEMS = [("What is $2 + 2$?", "$2 + 2 = \\boxed{4}$."), ("What is $2 + 3$?", "$2 + 3 = \\boxed{5}$.")]
HUMANEVAL = {"task_id": "HumanEval/0", "entry_point": "add", "canonical_solution": "",
             "prompt": 'def add(*v):\n    """Add numbers.\n    >>> add(1, 2)\n    3\n    """\n',
             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocols")
    write_bbh(root, "snarks", SNARKS)
    write_bbh(root, "boolean_expressions", FREE_FORM)
    write_jsonl(root / "mbpp" / "mbpp.jsonl", MBPP_TASKS)
    os.makedirs(root / "math" / "test" / "algebra")
    for i, (problem, solution) in enumerate(MATH_PROBLEMS):
        (root / "math" / "test" / "algebra" / f"{i}.json").write_text(json.dumps(
            {"problem": problem, "level": "Level 1", "type": "Algebra", "solution": solution}))
    write_jsonl(root / "humaneval" / "HumanEval.jsonl", [HUMANEVAL])
    write_choice_csvs(root, "mmlu", "anatomy", {"dev": [["x", "a", "b", "c", "d", "A"]] * 5,
                                                 "test": [["Which bone?", "femur", "ulna", "skull", "rib", "B"],
                                                          ["Which organ?", "heart", "lung", "liver", "skin", "A"]]})
    for subject, golds in (("logic", "B"), ("law", "BAA")):  # sizes 1 and 3: mean over subjects 2/3, questions 1/2
        write_choice_csvs(root, "ceval", subject, {"dev": [["x", "a", "b", "c", "d", "A"]] * 5, "val": [
            [f"{subject}第{i}题____。", "甲", "乙", "丙", "丁", g] for i, g in enumerate(golds)]})
    write_jsonl(root / "gsm8k" / "test.jsonl", [{"question": f"How many? ({a})", "answer": f"So.\n#### {a}"}
                                                for a in (7, 5, 7, 1)])
    return root


def bbh_exemplars(subject: str) -> tuple[str, list[dict]]:
    """BIG-Bench-Hard's chain-of-thought prompt of a task, as lm-eval ships it: the instruction, 3 examples."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from megatron_qwen.evaluation.lm_eval_config import lm_eval_tasks_dir

    cfg = load_yaml(lm_eval_tasks_dir() / "bbh" / "cot_fewshot" / f"{subject}.yaml", resolve_func=False)
    return cfg["description"], cfg["fewshot_config"]["samples"]


def bbh_prompt(subject: str, question: str) -> str:
    """OpenCompass's bbh_gen: "Follow the given examples and answer the question.\\n{cot prompt}\\n\\nQ: {input}\\n
    A: Let's think step by step." with the cot prompt file = instruction + examples."""
    instruction, examples = bbh_exemplars(subject)
    hint = instruction + "\n\n".join(f"Q: {e['input']}\nA: Let's think step by step.\n{e['target']}" for e in examples)
    return f"Follow the given examples and answer the question.\n{hint}\n\nQ: {question}\nA: Let's think step by step."


def math_prompt(problem: str) -> str:
    """OpenCompass's math_gen_265cce for a base model: its rounds joined by "\\n", Minerva's 4 examples."""
    from lm_eval.tasks.minerva_math.utils import list_fewshot_samples

    rounds = [r for e in list_fewshot_samples() for r in (f"Problem:\n{e['problem']}\nSolution:", e["solution"] + "\n")]
    return "\n".join([*rounds, f"Problem:\n{problem}\nSolution:\n"])


def mbpp_prompt(task: dict) -> str:
    """OpenCompass's mbpp_gen_1e1056 for a base model: tasks 2-4 as examples, rounds joined by "\\n"."""
    def human(t):
        tests = "\n".join(t["test_list"])
        return (f"You are an expert Python programmer, and here is your task: {t['text']} Your code should pass these "
                f"tests:\n\n {tests}  \n")

    rounds = [r for t in MBPP_TASKS[1:4] for r in (human(t), f"[BEGIN]\n '{t['code']}' \n[DONE] \n\n ")]
    return "\n".join([*rounds, human(task), "[BEGIN]\n"])


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory):
    model = save_model(successor_model({".": " So the answer is (B).", ":\n": " Final Answer: $4$. I hope",
                                        "]\n": " 'def add(*v):\n    return sum(v)' \n[DONE]"}),
                       tmp_path_factory.mktemp("base") / "model")
    return run_evaluate(load=model, data_dir=data, tasks=["bbh:snarks,boolean_expressions", "math:algebra", "mbpp"],
                        allow_code_execution=True, batch_size=4)


def test_base_prompts_are_opencompass_rounds(base_run):
    assert [s["arguments"][0][0] for s in samples(base_run, "qwen_bbh_snarks")] == [
        bbh_prompt("snarks", q) for q, _ in SNARKS]
    assert samples(base_run, "qwen_bbh_boolean_expressions")[0]["arguments"][0][0] == bbh_prompt(
        "boolean_expressions", FREE_FORM[0][0])
    assert [s["arguments"][0][0] for s in samples(base_run, "qwen_math_algebra")] == [
        math_prompt(p) for p, _ in MATH_PROBLEMS]
    assert [s["arguments"][0][0] for s in samples(base_run, "qwen_mbpp")] == [mbpp_prompt(t) for t in MBPP_TASKS[10:]]


def test_base_answers_scored_by_the_answer_key(base_run):
    """BBH: the reply in the exemplars' own format ("So the answer is (B).") is right where the key says (B), and the
    score is the mean over tasks; MATH: "$4$" is the first problem's answer; MBPP: the code between [BEGIN] and
    [DONE] passes task 11's asserts and fails task 12's."""
    assert [s["filtered_resps"][0] for s in samples(base_run, "qwen_bbh_snarks")] == ["B", "B"]
    assert [s["exact_match"] for s in samples(base_run, "qwen_bbh_snarks")] == [1.0, 0.0]
    assert samples(base_run, "qwen_bbh_boolean_expressions")[0]["exact_match"] == 1.0
    assert base_run["scores"]["bbh"]["score"] == pytest.approx(75.0)  # (1/2 + 1/1) / 2, not 2/3 over questions
    assert [s["math_equivalent"] for s in samples(base_run, "qwen_math_algebra")] == [1.0, 0.0]
    assert [s["pass_at_1"] for s in samples(base_run, "qwen_mbpp")] == [1.0, 0.0]
    assert base_run["scores"]["mbpp"]["score"] == pytest.approx(50.0)


@pytest.fixture(scope="module")
def chat_run(data, tmp_path_factory):
    """The same reply to every chat prompt (they all end in the assistant turn's "\\n")."""
    model = save_model(successor_model({"\n": "答案是B, so the answer is (A) 7"}),
                       tmp_path_factory.mktemp("chat") / "m")
    return run_evaluate(load=model, data_dir=data, chat=True, batch_size=4,
                        tasks=["mmlu:anatomy", "ceval:logic,law", "gsm8k", "bbh:snarks"])


def test_chat_prompts_are_qwens(chat_run):
    """model.chat()'s ChatML with the default system turn, the user turn as the chat scripts write it."""
    mmlu = ("The following is a multiple-choice question. Please choose the most suitable one among A, B, C and D as "
            "the answer to this question.\n\nWhich bone?\nA. femur\nB. ulna\nC. skull\nD. rib\n")
    assert samples(chat_run, "qwen_mmlu_anatomy")[0]["arguments"][0][0] == CHAT.format(mmlu)
    assert samples(chat_run, "qwen_ceval_logic")[0]["arguments"][0][0] == CHAT.format(
        "logic第0题____。\n\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n")
    assert samples(chat_run, "qwen_gsm8k")[0]["arguments"][0][0] == CHAT.format("How many? (7)")
    instruction, _ = bbh_exemplars("snarks")
    assert samples(chat_run, "qwen_bbh_snarks")[0]["arguments"][0][0] == CHAT.format(
        f"{instruction}Q: {SNARKS[0][0]}\nA: Let's think step by step.")


def test_chat_answers_scored_by_the_answer_key(chat_run):
    """One reply for all: MMLU reads A ("answer is (A"), C-Eval B ("答案是B"), GSM8K its last number 7, BBH A; C-Eval
    is the mean over its subjects (1/1 and 1/3), not over questions (2/4)."""
    scores = {b: s["score"] for b, s in chat_run["scores"].items()}
    assert [s["filtered_resps"][0] for s in samples(chat_run, "qwen_mmlu_anatomy")] == ["A", "A"]
    assert {s["filtered_resps"][0] for s in samples(chat_run, "qwen_ceval_law")} == {"B"}
    assert scores["mmlu"] == pytest.approx(50.0)
    assert scores["ceval"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert [s["numbers_equal"] for s in samples(chat_run, "qwen_gsm8k")] == [1.0, 0.0, 1.0, 0.0]
    assert scores["bbh"] == pytest.approx(50.0)


def test_chat_code_from_the_reply(data, tmp_path):
    """HumanEval: the body of the reply's fenced definition completes the prompt (evaluate_chat_humaneval.py); MBPP
    (our choice): the reply's fenced code runs with the asserts."""
    model = save_model(successor_model({"\n": "```\ndef add(*v):\n    return sum(v)\n```"}), tmp_path / "m")
    report = run_evaluate(load=model, data_dir=data, chat=True, tasks=["humaneval", "mbpp"], allow_code_execution=True)
    (sample,) = samples(report, "qwen_humaneval")
    assert sample["arguments"][0][0] == CHAT.format(
        "Write a Python function `add(*v)` to solve the following problem:\nAdd numbers.\n>>> add(1, 2)\n3\n\n"
        + HUMANEVAL["prompt"])
    assert sample["filtered_resps"][0] == HUMANEVAL["prompt"] + "    return sum(v)" and sample["pass_at_1"] == 1.0
    assert [s["pass_at_1"] for s in samples(report, "qwen_mbpp")] == [1.0, 0.0]


def test_lm_eval_bbh_credits_the_exemplars_format(data, tmp_path):
    """lm-eval's few-shot BBH: after "A:" the reply " (B)" is the exemplars' own format; it counts where the key
    says (B) (compared raw, " (B)" != "(B)": lm-eval PR #2502)."""
    model = save_model(successor_model({":": " (B)\n\n"}), tmp_path / "m")
    report = run_evaluate(load=model, data_dir=data, protocol="lm-eval", tasks=["bbh:snarks"])
    rows = samples(report, "qwen_bbh_snarks", "answer")
    assert [s["resps"][0][0] for s in rows] == [" (B)", " (B)"]
    assert [s["exact_match"] for s in rows] == [1.0, 0.0]
    assert rows[0]["arguments"][0][0].endswith(f"Q: {SNARKS[0][0]}\nA:")


# --- the answer rules alone -------------------------------------------------------------------------------------
MMLU_DOC = {"question": "Which bone?", "A": "femur", "B": "ulna", "C": "skull", "D": "rib"}


@pytest.mark.parametrize("reply, letter", [
    ("The answer is C.", "C"), ("I choose D", "D"), ("B is correct.", "B"), ("A", "A"), ("C. skull", "C"),
    ("The ulna.", "B"),  # the option's text becomes its letter
    ("The answer isn't A, the answer is D", "D"),  # a negated answer is passed over
    ("bone of the skul", "C"),  # no letter at all: the closest option
])
def test_mmlu_chat_choice(reply, letter):
    from megatron_qwen.evaluation.answers_qwen import mmlu_chat_choice

    assert mmlu_chat_choice([[reply]], [MMLU_DOC]) == [[letter]]


@pytest.mark.parametrize("reply, letter", [
    ("答案是C。", "C"), ("应该选D", "D"), ("B选项正确", "B"), ("（A）", "A"),
    ("传输层的特性是保证可靠", "C"),  # the question's echo becomes "答案是", the option's text its letter
])
def test_ceval_chat_choice(reply, letter):
    from megatron_qwen.evaluation.answers_qwen import ceval_chat_choice

    doc = {"question": "关于传输层，传输层的特性是____。", "A": "不可靠", "B": "按序", "C": "保证可靠", "D": "都不是"}
    assert ceval_chat_choice([[reply]], [doc]) == [[letter]]


def test_number_rules():
    from megatron_qwen.evaluation import answers_qwen as q

    assert q.gsm8k_gold({"answer": "So.\n#### 1,000"}) == "1000"
    assert q.gsm8k_last_integer([["It is 12 then 007", "no number", "3.5"]], [{}]) == [["[invalid]", "[invalid]", "5"]]
    assert q.last_number("That is +1,234.50 dollars, or 7.") == "7."
    assert q.numbers_equal(["1234.5"], ["1,234.50".replace(",", "")]) == 1.0 and q.numbers_equal(["5"], [""]) == 0.0


def test_code_rules():
    from megatron_qwen.evaluation.answers_opencompass import mbpp_code
    from megatron_qwen.evaluation.answers_qwen import humaneval_chat_body

    assert mbpp_code(" 'def f():\r\n  return 1' \n[DONE] \n\n ") == "def f():\r\n  return 1"
    assert humaneval_chat_body("Sure:\ndef add(a, b):\n    return a + b\nprint(add(1, 2))", "add") == "    return a + b"
    assert humaneval_chat_body("return a + b", "add") == "    return a + b"


def test_math_and_bbh_rules():
    from megatron_qwen.evaluation import answers_opencompass as o

    reply = "So $x = 1/2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert o.math_final_answer(reply) == "\\frac{1}{2}"
    assert o.math_equivalent(["0.5"], [o.math_final_answer(reply)]) == 1.0
    assert o.math_reference({"solution": "Thus $\\boxed{\\frac{1}{2}}$."}) == "\\frac{1}{2}"
    assert o.bbh_letter("Let me see. So the answer is (C).") == "C"
    assert o.bbh_free_form("So the answer is valid.\nQ: next") == "valid"
