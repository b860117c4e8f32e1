"""ChatML encoding and the loss mask of Qwen's finetune script, against hand-written expectations."""

import unicodedata

import pytest

from megatron_qwen.tokenizer import ChatFormatError, encode_chat, load_tokenizer, render_chat

S, E, NL = 151644, 151645, 198  # <|im_start|>, <|im_end|>, "\n"
SYSTEM, USER, ASSISTANT = 8948, 872, 77091  # "system", "user", "assistant"
HELPFUL = [2610, 525, 264, 10950, 17847, 13]  # "You are a helpful assistant." (Qwen's default system prompt)
# "2+2?" answered "4" after the helpful-assistant system turn, and its mask: in system and user turns
# <|im_start|>, <|im_end|> and "\n" are trained, role header and content not; in the assistant turn only
# the role header ("assistant\n") is masked.
TWO_PLUS_TWO_IDS = [S, SYSTEM, NL, *HELPFUL, E, NL,
                    S, USER, NL, 17, 10, 17, 30, E, NL,
                    S, ASSISTANT, NL, 19, E, NL]
TWO_PLUS_TWO_MASK = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1,
                     1, 0, 0, 0, 0, 0, 0, 1, 1,
                     1, 0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_system_user_assistant(tok):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    ids, mask = encode_chat(messages, tok)
    assert ids == TWO_PLUS_TWO_IDS
    assert mask == TWO_PLUS_TWO_MASK


def test_default_system_turn_as_qwen_finetune(tok):
    # Qwen's finetune.py puts "You are a helpful assistant." first when a sample has no system turn,
    # with the mask of any system turn: role header and content masked, the framing tokens trained.
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ids, mask = encode_chat(messages, tok)
    assert ids == TWO_PLUS_TWO_IDS  # the same as with the system turn written out
    assert mask == TWO_PLUS_TWO_MASK
    assert render_chat(messages).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    # Turned off, and never added where a system turn exists.
    ids, mask = encode_chat(messages, tok, default_system=None)
    assert ids == [S, USER, NL, 17, 10, 17, 30, E, NL, S, ASSISTANT, NL, 19, E, NL]
    assert mask == [1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    own = [{"role": "system", "content": "Be brief."}, *messages]
    assert encode_chat(own, tok)[0].count(S) == 3


def test_multi_turn(tok):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "yo"},
        {"role": "assistant", "content": "Hi"},
    ]
    ids, mask = encode_chat(messages, tok, default_system=None)
    assert ids == [S, USER, NL, 13048, E, NL, S, ASSISTANT, NL, 16032, E, NL,
                   S, USER, NL, 16032, E, NL, S, ASSISTANT, NL, 13048, E, NL]
    assert mask == [1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1,
                    1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1]


def test_special_text_in_content_stays_ordinary(tok):
    ids, mask = encode_chat([{"role": "user", "content": "x"},
                             {"role": "assistant", "content": "<|im_end|>"}], tok, default_system=None)
    body = tok.tokenize("<|im_end|>")
    assert E not in body
    assert ids[-len(body) - 2:] == [*body, E, NL]
    assert ids.count(E) == 2 and len(ids) == len(mask)


def test_content_is_normalized_to_nfc(tok):
    composed = [{"role": "user", "content": "Tiếng Việt"}, {"role": "assistant", "content": "한국어"}]
    decomposed = [{k: unicodedata.normalize("NFD", v) for k, v in m.items()} for m in composed]
    assert decomposed != composed
    assert encode_chat(decomposed, tok) == encode_chat(composed, tok)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ({"role": "user"}, "non-empty list"),
        (["hi"], "message 0 is not an object"),
        ([{"role": "bot", "content": "x"}], "role 'bot'"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "content is int"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "x"},
          {"role": "assistant", "content": "x"}], "system message may only come first"),
        ([{"role": "user", "content": "x"}], "no assistant message"),
    ],
)
def test_malformed_conversations(tok, messages, message):
    with pytest.raises(ChatFormatError, match=message):
        encode_chat(messages, tok)


def test_render_chat():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_chat(messages) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    assert render_chat(messages, add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
