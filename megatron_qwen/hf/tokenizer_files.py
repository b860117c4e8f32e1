"""The tokenizer files a Hugging Face client reads, written next to an exported model.

No official Hugging Face tokenizer exists for Qwen-1 (its repositories ship ``qwen.tiktoken`` and
remote code), so ``tokenizer.json`` is built here with transformers' own tiktoken converter from
the same ``qwen.tiktoken`` our tokenizer reads, with Qwen's split pattern, NFC normalization (as
Qwen's tokenizer normalizes) and the 208 special tokens at their ids. A client then needs no file
from elsewhere: ``AutoTokenizer.from_pretrained(export)`` gives our ids, ``apply_chat_template``
renders the ChatML of ``tools/generate.py --chat`` and Qwen's ``make_context`` (default system turn
included).

One difference stays, and no template can remove it: transformers renders the chat template to one
string and reads special-token text anywhere in it as the special token, so ``<|im_end|>`` written in a
message ends the turn; Qwen's make_context, tools/generate.py --chat and training encode message content
as text (docs/checkpoints.md, "Special-token text inside a message").
"""

from __future__ import annotations

import json
import os
import tempfile

from megatron_qwen.tokenizer.chatml import DEFAULT_SYSTEM_PROMPT
from megatron_qwen.tokenizer.files import parse_bpe_ranks, read_tokenizer_file
from megatron_qwen.tokenizer.qwen import ENDOFTEXT, IM_END, IM_START, QWEN_SPLIT_PATTERN, SPECIAL_TOKENS

# Qwen's make_context and render_chat (tokenizer/chatml.py): a system turn first (the default one
# when the conversation has none), every turn `<|im_start|>{role}\n{content}<|im_end|>\n`, then the
# assistant's opened turn when a reply is wanted.
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '" + IM_START + "system\\n" + DEFAULT_SYSTEM_PROMPT + IM_END + "\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + IM_START + "assistant\\n' }}{%- endif %}"
)


def tokenizer_json(tiktoken_path: str):
    """A ``tokenizers.Tokenizer`` of qwen.tiktoken made by transformers' TikTokenConverter."""
    # deferred: transformers takes a second to import; only writing tokenizer.json needs it
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=tiktoken_path, pattern=QWEN_SPLIT_PATTERN,
                                  extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    tokenizer.normalizer = normalizers.NFC()
    for token, want in SPECIAL_TOKENS.items():  # appended after the BPE ranks in id order; checked, not assumed
        if tokenizer.token_to_id(token) != want:
            raise RuntimeError(f"TikTokenConverter gave {token} id {tokenizer.token_to_id(token)}, not {want}")
    return tokenizer


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json: the fast tokenizer as tokenizer.json defines it, with nothing added."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
            "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "bos_token": None, "unk_token": None,
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "additional_special_tokens": [IM_START, IM_END], "chat_template": CHAT_TEMPLATE}


def write_tokenizer_files(out_dir: str, model_max_length: int, tokenizer_model: str | None = None) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir`` (an existing
    directory); returns their names. ``tokenizer_model``: the qwen.tiktoken to convert (default: the verified
    fetched copy, as load_tokenizer resolves it)."""
    data, source = read_tokenizer_file(tokenizer_model)
    parse_bpe_ranks(data, source)  # a corrupt explicit file fails here in one line, not inside the converter
    with tempfile.TemporaryDirectory() as tmp:  # the converter reads a path; hand it exactly the checked bytes
        path = os.path.join(tmp, "qwen.tiktoken")
        with open(path, "wb") as f:
            f.write(data)
        tokenizer_json(path).save(os.path.join(out_dir, "tokenizer.json"))
    side = {"tokenizer_config.json": tokenizer_config(model_max_length),
            "special_tokens_map.json": {"eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT,
                                        "additional_special_tokens": [IM_START, IM_END]}}
    for name, content in side.items():
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
    return ["tokenizer.json", *side]
