"""Comparison pairs from jsonl (or parquet) records: ours, and the public formats of the preference sets the
Qwen report's Table 4 measures (docs/qwen.md section 11 lists the files).

A record becomes a list of Pairs (PRM800K's records hold several, the others one), or a one-line reason why
it is malformed, which the readers count and report with its file and line (data/sources.py's parse_block).
A Pair is two ChatML conversations, each ending with an assistant response: the preferred one and the other.

- ``pairs`` (ours): ``prompt`` (a string, the user's turn) or ``messages`` (a ChatML list ending with a user
  turn), and ``chosen`` and ``rejected``: each the assistant's reply as a string, or a list of messages that
  continues the prompt and ends with an assistant turn.
- ``anthropic-hh`` (Anthropic HH-RLHF, helpful-base and helpful-online): ``chosen`` and ``rejected`` are whole
  transcripts of "\\n\\nHuman: " and "\\n\\nAssistant: " turns.
- ``openai-summarize`` (OpenAI summarize-from-feedback comparisons): ``info`` (the post or article),
  ``summaries`` (two, each with ``text``) and ``choice`` (the preferred summary's index).
- ``stanford-shp`` (Stanford SHP): ``history`` (the post), ``human_ref_A``, ``human_ref_B`` and ``labels``
  (1 when A is preferred).
- ``prm800k`` (OpenAI PRM800K): a solution's ``question.problem`` and its ``label.steps``, each with rated
  ``completions``: at every step whose completions were rated differently, the first best-rated completion is
  preferred to the first worst-rated one, both after the steps the solution kept before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_qwen.tokenizer.chatml import ChatFormatError, encode_reward_sequence, validate_messages

Turns = list[tuple[str, str]]


@dataclass(frozen=True)
class Pair:
    chosen: Turns  # a conversation ending with the preferred assistant response
    rejected: Turns  # the same prompt, ending with the other response


class _Malformed(ValueError):
    """Why a record holds no pair; its message is the one-line reason the readers count."""


def _field(obj: dict, key: str, kind: type = str):
    if key not in obj:
        raise _Malformed(f"missing key: {key!r}")
    if not isinstance(obj[key], kind):
        raise _Malformed(f"non-{kind.__name__} value: {key!r} is {type(obj[key]).__name__}")
    return obj[key]


def _reply(obj: dict, key: str, prompt: Turns) -> Turns:
    """``prompt`` continued by ``obj[key]``: a reply string, or messages ending with an assistant turn."""
    value = obj.get(key)
    if isinstance(value, str):
        return [*prompt, ("assistant", value)]
    if key not in obj:
        raise _Malformed(f"missing key: {key!r}")
    if not isinstance(value, list):
        raise _Malformed(f"non-string value: {key!r} is {type(value).__name__}, not a reply or a message list")
    try:
        turns = validate_messages([{"role": r, "content": c} for r, c in prompt] + value)
    except ChatFormatError as e:
        raise _Malformed(f"malformed conversation: {key!r}: {e}") from None
    if turns[-1][0] != "assistant":
        raise _Malformed(f"malformed conversation: {key!r} does not end with an assistant message")
    return turns


def _ours(obj: dict) -> list[Pair]:
    if "messages" in obj:
        try:
            prompt = validate_messages(obj["messages"], require_assistant=False)
        except ChatFormatError as e:
            raise _Malformed(f"malformed conversation: {e}") from None
        if prompt[-1][0] != "user":
            raise _Malformed("malformed conversation: 'messages' must end with the user's turn")
    elif "prompt" in obj:
        prompt = [("user", _field(obj, "prompt"))]
    else:
        raise _Malformed("missing key: 'prompt' or 'messages'")
    return [Pair(_reply(obj, "chosen", prompt), _reply(obj, "rejected", prompt))]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _hh_transcript(text: str, key: str) -> Turns:
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise _Malformed(f"malformed conversation: {key!r} is not a transcript of Human and Assistant turns")
    turns = [("user" if speaker == "Human" else "assistant", content.strip())
             for speaker, content in zip(parts[1::2], parts[2::2])]
    if turns[-1][0] != "assistant":
        raise _Malformed(f"malformed conversation: {key!r} does not end with an Assistant turn")
    return turns


def _anthropic_hh(obj: dict) -> list[Pair]:
    return [Pair(_hh_transcript(_field(obj, "chosen"), "chosen"), _hh_transcript(_field(obj, "rejected"), "rejected"))]


def _openai_summarize(obj: dict) -> list[Pair]:
    info, summaries, choice = _field(obj, "info", dict), _field(obj, "summaries", list), _field(obj, "choice", int)
    if len(summaries) != 2 or choice not in (0, 1) or not all(isinstance(s, dict) for s in summaries):
        raise _Malformed("malformed comparison: expected two summaries and choice 0 or 1")
    texts = [_field(s, "text").strip() for s in summaries]
    if info.get("post") is not None:
        prompt = (f"SUBREDDIT: r/{info.get('subreddit', '')}\nTITLE: {info.get('title', '')}\n"
                  f"POST: {info['post']}\n\nTL;DR:")
    else:
        prompt = f"ARTICLE: {_field(info, 'article')}\n\nTL;DR:"
    turns = [("user", prompt)]
    return [Pair([*turns, ("assistant", texts[choice])], [*turns, ("assistant", texts[1 - choice])])]


def _stanford_shp(obj: dict) -> list[Pair]:
    prompt = [("user", _field(obj, "history"))]
    a, b, label = _field(obj, "human_ref_A"), _field(obj, "human_ref_B"), _field(obj, "labels", int)
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return [Pair([*prompt, ("assistant", chosen)], [*prompt, ("assistant", rejected)])]


def _prm800k(obj: dict) -> list[Pair]:
    problem = _field(_field(obj, "question", dict), "problem")
    steps = _field(_field(obj, "label", dict), "steps", list)
    pairs, kept = [], []  # kept: the solution's text before the current step
    for step in steps:
        rated = [c for c in step.get("completions") or [] if isinstance(c, dict) and c.get("rating") is not None]
        if len({c["rating"] for c in rated}) > 1:
            best = max(rated, key=lambda c: c["rating"])  # max/min return the first of equal ratings
            worst = min(rated, key=lambda c: c["rating"])
            pairs.append(Pair(*[[("user", problem), ("assistant", "\n".join([*kept, c["text"]]))]
                                for c in (best, worst)]))
        index, human = step.get("chosen_completion"), step.get("human_completion")
        if isinstance(index, int) and 0 <= index < len(step.get("completions") or []):
            kept.append(step["completions"][index]["text"])
        elif isinstance(human, dict) and isinstance(human.get("text"), str):
            kept.append(human["text"])
        else:
            break  # the labeler stopped here: later steps have no solution before them
    return pairs


PAIR_FORMATS: dict[str, Callable[[dict], list[Pair]]] = {
    "pairs": _ours, "anthropic-hh": _anthropic_hh, "openai-summarize": _openai_summarize,
    "stanford-shp": _stanford_shp, "prm800k": _prm800k,
}
# The fields each format reads: the columns taken from a parquet file.
PAIR_FIELDS = {"pairs": ("prompt", "messages", "chosen", "rejected"), "anthropic-hh": ("chosen", "rejected"),
               "openai-summarize": ("info", "summaries", "choice"),
               "stanford-shp": ("history", "human_ref_A", "human_ref_B", "labels"), "prm800k": ("question", "label")}


def pair_record_checker(fmt: str) -> Callable[[Any], list[Pair] | str]:
    """check(record) -> its pairs, or the one-line reason it is malformed (data/sources.py's checkers' form)."""
    read = PAIR_FORMATS[fmt]

    def check(obj: Any) -> list[Pair] | str:
        if not isinstance(obj, dict):
            return "malformed JSON"
        try:
            return read(obj)
        except _Malformed as e:
            return str(e)
        except (KeyError, TypeError, AttributeError) as e:  # a nested field of another shape than the format's
            return f"malformed record: {type(e).__name__}: {e}"

    return check


def encode_pairs(records: list[list[Pair]], tokenizer, default_system: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, sequence lengths) of a pair shard's block: each pair's chosen then rejected sequence
    (data/pairs.py), as tokenizer/chatml.py's encode_reward_sequence renders them."""
    sequences = [encode_reward_sequence(side, tokenizer, default_system)
                 for pairs in records for pair in pairs for side in (pair.chosen, pair.rejected)]
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    return np.fromiter((i for s in sequences for i in s), dtype=np.int32, count=int(lengths.sum())), lengths
