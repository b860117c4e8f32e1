"""The Qwen (v1) tokenizer: qwen.tiktoken's 151,643 BPE ranks + 208 special tokens on tiktoken."""

from __future__ import annotations

import json
import os
import unicodedata
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import tiktoken

from megatron_qwen.tokenizer.files import NUM_BPE_RANKS, parse_bpe_ranks, read_tokenizer_file

# docs/qwen.md section 2; the bare \p{N} splits numbers into single digits.
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: dict[str, int] = {
    token: NUM_BPE_RANKS + i
    for i, token in enumerate([ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{j}|>" for j in range(205)])
}
VOCAB_SIZE = NUM_BPE_RANKS + len(SPECIAL_TOKENS)  # 151,851

# tiktoken's regex recurses on long whitespace runs and panics (stack overflow, ~1M spaces with an
# 8 MiB stack; the panic is not an Exception). Texts longer than this are encoded in chunks.
MAX_CHUNK_CHARS = 20_000


def _cut_is_exact(left: str, right: str) -> bool:
    """Whether a split pattern match always ends between `left` and `right`.

    True when `left` is a letter or digit and not letter-followed-by-letter: no pattern extends
    a match past such a character (letters runs end at a non-letter, digits are single pieces,
    punctuation/whitespace patterns never include them), and the one lookahead (`\\s+(?!\\S)`)
    cannot end there. So encoding both sides separately gives the ids of the whole.
    """
    lcat = unicodedata.category(left)[0]
    if lcat == "N":
        return True
    return lcat == "L" and unicodedata.category(right)[0] != "L"


def split_for_encoding(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Split `text` into chunks of at most `max_chars`, at exact cut points when there is one in
    the chunk's second half; only a pathological stretch without one (a huge whitespace run) is
    cut anywhere, where its ids may differ slightly from an unsplit encoding."""
    chunks = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = next((i for i in range(end, start + max_chars // 2, -1) if _cut_is_exact(text[i - 1], text[i])), end)
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


def nfc(text: str) -> str:
    """`text` in Unicode NFC; the check alone is cheap, so text already in NFC (nearly all) costs no copy."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


class QwenTokenizer:
    """Qwen's tokenizer. It has what megatron-core's datasets read of a tokenizer (``eod``, ``pad``,
    ``vocab_size``, ``unique_identifiers``) without subclassing megatron-core's base class, whose
    import costs the tools seconds of start-up.

    Text is always encoded as ordinary text: a literal "<|endoftext|>" inside a document becomes
    ordinary tokens, never the special id. Special ids appear only where code puts them (EOD, ChatML).
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], source: str, num_threads: int | None = None,
                 max_chunk_chars: int = MAX_CHUNK_CHARS):
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("tokenizer_path", [source])]
        )
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)
        self.source = source
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        self.max_chunk_chars = max_chunk_chars
        self.encoding = tiktoken.Encoding(
            "qwen", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=mergeable_ranks, special_tokens=SPECIAL_TOKENS
        )
        self._vocab: dict[bytes | str, int] | None = None

    # --- ids of the special tokens -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def eod(self) -> int:
        return SPECIAL_TOKENS[ENDOFTEXT]

    @property
    def pad(self) -> int:
        return SPECIAL_TOKENS[ENDOFTEXT]

    @property
    def im_start_id(self) -> int:
        return SPECIAL_TOKENS[IM_START]

    @property
    def im_end_id(self) -> int:
        return SPECIAL_TOKENS[IM_END]

    @property
    def vocab(self) -> dict[bytes | str, int]:
        """Token (bytes for BPE tokens, str for special tokens) -> id."""
        if self._vocab is None:
            vocab: dict[bytes | str, int] = {
                self.encoding.decode_single_token_bytes(i): i for i in range(NUM_BPE_RANKS)
            }
            vocab.update(SPECIAL_TOKENS)
            self._vocab = vocab
        return self._vocab

    @property
    def inv_vocab(self) -> dict[int, bytes | str]:
        return {i: token for token, i in self.vocab.items()}

    # --- encoding ---------------------------------------------------------------------------
    # Every path normalizes to NFC first, as Qwen's tokenizer does (docs/qwen.md section 2), so
    # decomposed input gets the ids of its composed form.
    def tokenize(self, text: str) -> list[int]:
        text = nfc(text)
        if len(text) <= self.max_chunk_chars:
            return self.encoding.encode_ordinary(text)
        ids: list[int] = []
        for chunk in split_for_encoding(text, self.max_chunk_chars):
            ids.extend(self.encoding.encode_ordinary(chunk))
        return ids

    def tokenize_array(self, text: str) -> np.ndarray:
        """Like tokenize, as an int32 array without building Python ints (the preprocessing path).

        `encode_to_numpy` with no allowed and no disallowed specials is ordinary encoding; it
        releases the GIL, so threads calling it run in parallel."""
        text = nfc(text)
        if len(text) <= self.max_chunk_chars:
            return self.encoding.encode_to_numpy(text, disallowed_special=()).view(np.int32)
        parts = [
            self.encoding.encode_to_numpy(chunk, disallowed_special=())
            for chunk in split_for_encoding(text, self.max_chunk_chars)
        ]
        return np.concatenate(parts).view(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """tokenize() of each text, in parallel threads (tiktoken's encode_ordinary_batch)."""
        texts = [nfc(t) for t in texts]
        if all(len(t) <= self.max_chunk_chars for t in texts):
            return self.encoding.encode_ordinary_batch(texts, num_threads=self.num_threads)
        chunked = [split_for_encoding(t, self.max_chunk_chars) for t in texts]
        flat = self.encoding.encode_ordinary_batch([c for chunks in chunked for c in chunks],
                                                   num_threads=self.num_threads)
        out, k = [], 0
        for chunks in chunked:
            ids: list[int] = []
            for part in flat[k:k + len(chunks)]:
                ids.extend(part)
            out.append(ids)
            k += len(chunks)
        return out

    def detokenize(self, ids: Iterable[int]) -> str:
        """Decode ids (special ids to their surface form); invalid UTF-8 becomes U+FFFD."""
        return self.encoding.decode([int(i) for i in ids], errors="replace")


def load_tokenizer(tokenizer_model: str | None = None, num_threads: int | None = None) -> QwenTokenizer:
    """The Qwen tokenizer from `tokenizer_model` (a qwen.tiktoken file or a checkpoint folder holding
    one), else from the verified cached copy; raises TokenizerFileError (one line) when neither works."""
    data, source = read_tokenizer_file(tokenizer_model)
    return QwenTokenizer(parse_bpe_ranks(data, source), source, num_threads=num_threads)
