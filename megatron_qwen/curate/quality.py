"""Step 4: rule-based quality filters (Gopher-style rules, per-language thresholds from a JSON file) and a
hook for a model-based scorer. Every removed document is counted by the rule that removed it
(datatrove's `dropped_<rule>` statistics).

Word counts use `text.tokens`, so a Chinese character counts as a word; rules that make no sense for a
language are switched off in its section with `null`; mean word length looks only at words of
space-separated scripts, so CJK text passes it. A document's section is its `lang` (step 1), else `default`;
a language section lists only what differs (the default file: `zh` needs 100 characters and has Chinese
stop words).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, fields
from typing import Callable

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_duplicates,
    find_top_duplicate,
    get_n_grams,
)

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.curate.text import CJK_RE, tokens

DEFAULT_RULES_FILE = os.path.join(os.path.dirname(__file__), "quality_rules.json")
# Symbols: Unicode category S (math, currency, modifiers, other: + = | $ © ...) of the basic plane, emoji and
# pictographs above it, and '#' (Gopher's symbol); one regex, so counting runs in C.
BMP_SYMBOLS = "".join(re.escape(chr(c)) for c in range(0x10000) if unicodedata.category(chr(c))[0] == "S")
SYMBOL_RE = re.compile(f"[#{BMP_SYMBOLS}\U0001F000-\U0001FAFF]")
DIGIT_RE = re.compile(r"\d")
BULLETS = ("-", "*", "•", "·", "●", "▪", "‣", "–", "—")
ELLIPSES = ("...", "…", "。。。")


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of one language; None switches a rule off."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_ratio: float | None = 0.1  # symbols (Unicode category S, and '#') / non-space characters
    max_digit_ratio: float | None = 0.3  # digits / non-space characters
    max_duplicate_line_fraction: float | None = 0.3
    max_duplicate_line_char_fraction: float | None = 0.2
    max_top_2gram_char_fraction: float | None = 0.2
    max_duplicate_5gram_char_fraction: float | None = 0.15
    max_duplicate_10gram_char_fraction: float | None = 0.1
    max_bullet_line_fraction: float | None = 0.9
    max_ellipsis_line_fraction: float | None = 0.3
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")
    min_score: float | None = None  # model-based scorer's minimum (the scorer is given to QualityFilter)


def load_rules(path: str = DEFAULT_RULES_FILE) -> dict[str, QualityRules]:
    """{"default": rules, lang: rules, ...}; a language section overrides the default section's values."""
    try:
        with open(path, encoding="utf-8") as f:
            sections = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--quality-config {path}: cannot read it as JSON ({e})") from None
    names = {f.name for f in fields(QualityRules)}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"--quality-config {path}: expected an object of sections, e.g. {{\"default\": {{...}}}}")
    for section, values in sections.items():
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"--quality-config {path}: section {section!r} has unknown rule(s) {unknown}; "
                              f"known: {sorted(names)}")
    default = {**{f.name: f.default for f in fields(QualityRules)}, **sections.get("default", {})}
    rules = {}
    for section, values in {"default": {}, **sections}.items():
        merged = {**default, **values}
        merged["stop_words"] = tuple(merged["stop_words"] or ())
        rules[section] = QualityRules(**merged)
    return rules


def load_scorer(spec: str) -> Callable[[str], float]:
    """'module:function' -> the callable (text -> score) a model-based filter plugs in."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"--quality-scorer {spec}: cannot import it as module:function ({e})") from None


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


def _over(limit: float | None, value: float) -> bool:
    return limit is not None and value > limit


def _under(limit: float | None, value: float) -> bool:
    return limit is not None and value < limit


def failed_rule(text: str, rules: QualityRules, score: Callable[[str], float] | None = None) -> str | None:
    """The first rule the text fails, or None if it passes all."""
    words = tokens(text)
    if _under(rules.min_words, len(words)):
        return "too_few_words"
    if _over(rules.max_words, len(words)):
        return "too_many_words"
    spaced = [w for w in words if not CJK_RE.match(w)]  # mean word length: words of space-separated scripts
    mean_length = sum(map(len, spaced)) / len(spaced) if spaced else None
    if mean_length is not None and _under(rules.min_mean_word_length, mean_length):
        return "mean_word_length_low"
    if mean_length is not None and _over(rules.max_mean_word_length, mean_length):
        return "mean_word_length_high"
    chars = len(text) - sum(map(str.isspace, text))
    if _over(rules.max_symbol_ratio, _fraction(len(SYMBOL_RE.findall(text)), chars)):
        return "symbol_ratio"
    if _over(rules.max_digit_ratio, _fraction(len(DIGIT_RE.findall(text)), chars)):
        return "digit_ratio"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    dup_lines, dup_line_chars = find_duplicates(lines)
    if _over(rules.max_duplicate_line_fraction, _fraction(dup_lines, len(lines))):
        return "duplicate_lines"
    if _over(rules.max_duplicate_line_char_fraction, _fraction(dup_line_chars, sum(map(len, lines)))):
        return "duplicate_line_chars"
    word_chars = sum(map(len, words))
    if len(words) > 1 and _over(rules.max_top_2gram_char_fraction,
                                _fraction(find_top_duplicate(get_n_grams(words, 2)), word_chars)):
        return "top_2gram"
    for n, limit in ((5, rules.max_duplicate_5gram_char_fraction), (10, rules.max_duplicate_10gram_char_fraction)):
        if _over(limit, _fraction(find_all_duplicate(words, n), word_chars)):
            return f"duplicate_{n}grams"
    if _over(rules.max_bullet_line_fraction, _fraction(sum(line.startswith(BULLETS) for line in lines), len(lines))):
        return "bullet_lines"
    if _over(rules.max_ellipsis_line_fraction, _fraction(sum(line.endswith(ELLIPSES) for line in lines), len(lines))):
        return "ellipsis_lines"
    stop_words = set(rules.stop_words)
    if stop_words and _under(rules.min_stop_words, sum(w in stop_words for w in words)):
        return "stop_words"
    if score is not None and rules.min_score is not None and score(text) < rules.min_score:
        return "model_score"
    return None


class QualityFilter(BaseFilter):
    """Drops documents failing a rule of their language's section, counted as `dropped_<rule>`."""

    name = "quality rules"

    def __init__(self, rules: dict[str, QualityRules], scorer: Callable[[str], float] | str | None = None):
        super().__init__()
        self.rules = rules
        self.scorer = load_scorer(scorer) if isinstance(scorer, str) else scorer

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        rules = self.rules.get(doc.metadata.get("lang"), self.rules["default"])
        rule = failed_rule(doc.text, rules, self.scorer)
        return True if rule is None else (False, rule)
