"""ChatML conversations -> token ids plus the loss mask of Qwen's public finetune script.

Each turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n` (role, newline and content encoded
separately, content as ordinary text). The mask is aligned with the ids, 1 = "this token is a
training target" (the HF-label convention; a dataset predicting ids[1:] uses mask[1:]):

    system / user turn:  <|im_start|>=1  role=0 \\n=0  content=0  <|im_end|>=1 \\n=1
    assistant turn:      <|im_start|>=1  role=0 \\n=0  content=1  <|im_end|>=1 \\n=1

That is exactly Qwen's finetune.py: system and user content masked, but their <|im_start|>,
<|im_end|> and trailing newline still trained; for assistant turns only the role header is masked.
Like finetune.py, a conversation without a system message gets DEFAULT_SYSTEM_PROMPT first
(`default_system=None` turns that off).

A reward model scores the same rendering of a conversation whose last turn is the assistant's response,
closed by that turn's <|im_end|> with nothing after it (encode_reward_sequence): the reward is the model's
value at that token (docs/qwen.md section 11).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megatron_qwen.tokenizer.qwen import QwenTokenizer

ROLES = ("system", "user", "assistant")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # Qwen's finetune.py and chat()


class ChatFormatError(ValueError):
    """A conversation that is not a ChatML message list; the message is a one-line reason."""


def validate_messages(messages: Any, require_assistant: bool = True) -> list[tuple[str, str]]:
    """Return [(role, content)], or raise ChatFormatError naming the first problem."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError('"messages" must be a non-empty list of {"role", "content"} objects')
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ChatFormatError(f"message {i}: a system message may only come first")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i}: content is {type(content).__name__}, not a string")
        turns.append((role, content))
    if require_assistant and not any(role == "assistant" for role, _ in turns):
        raise ChatFormatError("no assistant message, so nothing to train on")
    return turns


def with_system(turns: list[tuple[str, str]], default_system: str | None) -> list[tuple[str, str]]:
    """`turns` with ("system", default_system) first when they have no system turn (and it is not None)."""
    if default_system is None or (turns and turns[0][0] == "system"):
        return turns
    return [("system", default_system), *turns]


def render_chat(messages: list[dict], add_generation_prompt: bool = False,
                default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The ChatML text of a conversation (for display and prompting), with the system turn training saw."""
    turns = with_system(validate_messages(messages, require_assistant=False), default_system)
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def encode_chat(messages: list[dict], tokenizer: "QwenTokenizer",
                default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one conversation, mask as described in the module docstring."""
    return encode_turns(validate_messages(messages), tokenizer, default_system)


def encode_turns(turns: list[tuple[str, str]], tokenizer: "QwenTokenizer",
                 default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> tuple[list[int], list[int]]:
    """encode_chat of turns already checked by validate_messages."""
    newline = tokenizer.tokenize("\n")
    ids: list[int] = []
    mask: list[int] = []
    for role, content in with_system(turns, default_system):
        header = tokenizer.tokenize(role) + newline
        body = tokenizer.tokenize(content)
        ids += [tokenizer.im_start_id, *header, *body, tokenizer.im_end_id, *newline]
        mask += [1] + [0] * len(header) + [int(role == "assistant")] * len(body) + [1] * (1 + len(newline))
    return ids, mask


def encode_generation_prompt(turns: list[tuple[str, str]], tokenizer: "QwenTokenizer",
                             default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """The ids a chat model continues: ``turns`` (checked by validate_messages) in ChatML, encoded turn by turn as
    training encodes them (so text is never read as special tokens), then the assistant's turn opened."""
    ids, _ = encode_turns(turns, tokenizer, default_system)
    return ids + [tokenizer.im_start_id, *tokenizer.tokenize("assistant"), *tokenizer.tokenize("\n")]


def encode_reward_sequence(turns: list[tuple[str, str]], tokenizer: "QwenTokenizer",
                           default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """The ids a reward model scores: ``turns`` (checked by validate_messages, the last one the assistant's
    response) in ChatML, ending with the response's <|im_end|>, the end token the reward is read at: the chat
    template's rendering without the newline after the last <|im_end|>."""
    if not turns or turns[-1][0] != "assistant":
        raise ChatFormatError("the last message is not the assistant's response")
    ids, _ = encode_turns(turns, tokenizer, default_system)
    return ids[:len(ids) - len(tokenizer.tokenize("\n"))]
