"""The Qwen (v1) tokenizer on tiktoken, and ChatML."""

from megatron_qwen.tokenizer.chatml import DEFAULT_SYSTEM_PROMPT, ChatFormatError, encode_chat, render_chat
from megatron_qwen.tokenizer.files import TokenizerFileError, fetch_tokenizer
from megatron_qwen.tokenizer.qwen import SPECIAL_TOKENS, VOCAB_SIZE, QwenTokenizer, load_tokenizer

__all__ = [
    "QwenTokenizer",
    "load_tokenizer",
    "encode_chat",
    "render_chat",
    "DEFAULT_SYSTEM_PROMPT",
    "ChatFormatError",
    "TokenizerFileError",
    "fetch_tokenizer",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
]
