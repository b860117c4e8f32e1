"""generation_config.json of an export: the decoding settings Qwen published with its checkpoints, per
layout, for a base model and a chat model (docs/checkpoints.md "Generation settings" lists each value with
its source).

Without a max_new_tokens, transformers' generate() stops at its default max_length of 20 tokens, prompt
included; Qwen's remote code and transformers' Qwen2ForCausalLM both take their defaults from this file.
"""

from megatron_qwen.tokenizer.qwen import ENDOFTEXT, IM_END, SPECIAL_TOKENS

ENDOFTEXT_ID, IM_END_ID = SPECIAL_TOKENS[ENDOFTEXT], SPECIAL_TOKENS[IM_END]

# Qwen-7B-Chat's generation_config.json: nucleus sampling over all tokens, at most 512 new tokens; its later
# revisions add the repetition penalty, which only the chat models carry.
PUBLISHED_SAMPLING = {"do_sample": True, "top_k": 0, "top_p": 0.8, "max_new_tokens": 512}
CHAT_REPETITION_PENALTY = 1.1


def max_window_size(seq_length: int) -> int:
    """The history Qwen's chat() keeps (make_context's max_window_size): 6144 tokens in Qwen-7B-Chat's file for
    a model trained at 8192, the same three quarters of the training length here; the last quarter is left
    for the query and the reply."""
    return max(1, seq_length * 3 // 4)


def generation_config(layout: str, chat: bool, seq_length: int, decoding: bool = True) -> dict:
    """generation_config.json of a ``layout`` export ("qwen" or "qwen2") of a model trained at ``seq_length``.

    qwen: the keys Qwen's remote code reads besides transformers' (chat_format, max_window_size,
    stop_words_ids). qwen2: transformers' keys only; it stops at <|im_end|> as well as <|endoftext|> even for
    a base model (which never writes <|im_end|>), so a ChatML prompt ends where a chat client expects.
    ``decoding=False`` leaves out the decoding settings (sampling, penalty, max_new_tokens) for a client that
    sets its own: transformers lets the file's max_new_tokens override a max_length passed to generate()."""
    sampling = {**PUBLISHED_SAMPLING, **({"repetition_penalty": CHAT_REPETITION_PENALTY} if chat else {})}
    sampling = sampling if decoding else {}
    if layout == "qwen":
        return {"chat_format": "chatml" if chat else "raw", "eos_token_id": ENDOFTEXT_ID, "pad_token_id": ENDOFTEXT_ID,
                "stop_words_ids": [[ENDOFTEXT_ID], [IM_END_ID]] if chat else [[ENDOFTEXT_ID]],
                "max_window_size": max_window_size(seq_length), **sampling}
    return {"eos_token_id": [ENDOFTEXT_ID, IM_END_ID], "pad_token_id": ENDOFTEXT_ID, "bos_token_id": None, **sampling}
