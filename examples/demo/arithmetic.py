"""The demo's synthetic math SFT data: small arithmetic problems with their correct answers,
as ChatML conversations, split into a training set and a disjoint held-out set.

    {"messages": [{"role": "user", "content": "What is 23 + 18?"},
                  {"role": "assistant", "content": "41"}]}

The space is every problem with operands in range: a + b and a - b (a >= b, so answers are never
negative) for a, b < ADD_LIMIT, and a * b for a, b <= MUL_LIMIT.
"""

import json
import operator
import random
from dataclasses import dataclass
from pathlib import Path

ADD_LIMIT = 30
MUL_LIMIT = 12
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def answer(self) -> str:
        return str(_OPS[self.op](self.a, self.b))

    def conversation(self) -> dict:
        return {"messages": [{"role": "user", "content": self.question},
                             {"role": "assistant", "content": self.answer}]}


def all_problems() -> list[Problem]:
    adds = [Problem(a, "+", b) for a in range(ADD_LIMIT) for b in range(ADD_LIMIT)]
    subs = [Problem(a, "-", b) for a in range(ADD_LIMIT) for b in range(a + 1)]
    muls = [Problem(a, "*", b) for a in range(MUL_LIMIT + 1) for b in range(MUL_LIMIT + 1)]
    return adds + subs + muls


def split_problems(heldout: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out): a seeded random ``heldout`` problems are never trained on."""
    problems = all_problems()
    random.Random(seed).shuffle(problems)
    return problems[heldout:], problems[:heldout]


def write_conversations(problems: list[Problem], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.conversation()) + "\n")


def read_conversations(path: Path) -> list[tuple[str, str]]:
    """(question, reference answer) of each conversation in a file written by write_conversations."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            user, assistant = json.loads(line)["messages"]
            pairs.append((user["content"], assistant["content"]))
    return pairs
