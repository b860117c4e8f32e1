"""The normalization and the tokens that exact dedup, MinHash shingles, decontamination n-grams and the
quality rules all share, so that the steps agree on what "the same text" is.

Normalization: Unicode NFKC (full-width letters and digits become ASCII, compatibility forms fold), case
folding, punctuation and symbols dropped, whitespace runs made one space. Tokens: words of the normalized
text, except that CJK characters (Han, kana, hangul) are tokens of their own, since Chinese and Japanese
do not separate words with spaces and a word segmenter (spaCy, jieba) is a heavy dependency.
"""

from __future__ import annotations

import re
import unicodedata

from datatrove.utils.word_tokenizers import WordTokenizer

CJK_CHARS = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
CJK_RE = re.compile(f"[{CJK_CHARS}]")
TOKEN_RE = re.compile(rf"[{CJK_CHARS}]|[^\s{CJK_CHARS}]+")
# Punctuation and symbols (Unicode categories P and S) of the basic plane, and emoji above it, become
# spaces: a str.translate table, much faster than a regex over Unicode classes.
PUNCTUATION_TO_SPACE = {c: " " for c in range(0x10000) if unicodedata.category(chr(c))[0] in "PS"}
PUNCTUATION_TO_SPACE.update({c: " " for c in range(0x1F000, 0x1FB00)})


def normalize_text(text: str) -> str:
    """NFKC, case folding, punctuation/symbols removed, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(PUNCTUATION_TO_SPACE).split())


def tokens(text: str) -> list[str]:
    """Tokens of the normalized text: words, and each CJK character on its own."""
    return TOKEN_RE.findall(normalize_text(text))


class CurationTokenizer(WordTokenizer):
    """`tokens` in datatrove's word-tokenizer interface, so datatrove's MinHash and n-gram decontamination
    stages shingle with it instead of a spaCy model per language."""

    def __init__(self):
        super().__init__(language=None)

    def word_tokenize(self, text: str) -> list[str]:
        return tokens(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"[^\n]+", text)]
