"""PPO's prompt set: a JSONL file, one prompt per line, as {"prompt": "the user's turn"} or {"messages": [ChatML
messages ending with a user turn]} (the prompt half of data/preference.py's own pair format). Each becomes the
ids the policy continues: the conversation in ChatML with the assistant's turn opened (tokenizer/chatml.py).

Every line is read and checked before any model is built: a malformed line, a prompt that leaves no room in the
context for its response, and an empty file are each one line naming the file (and line).
"""

import json
import random

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.tokenizer.chatml import ChatFormatError, encode_generation_prompt, validate_messages

FLAG = "--prompt-data-path"


def _turns(record, where: str) -> list[tuple[str, str]]:
    if not isinstance(record, dict) or not ({"prompt", "messages"} & record.keys()):
        raise ConfigError(f'{where}: expected a JSON object with "prompt" (a string) or "messages" (ChatML)')
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"]:
            raise ConfigError(f'{where}: "prompt" must be a non-empty string')
        return [("user", record["prompt"])]
    try:
        turns = validate_messages(record["messages"], require_assistant=False)
    except ChatFormatError as e:
        raise ConfigError(f"{where}: {e}") from None
    if turns[-1][0] != "user":
        raise ConfigError(f"{where}: the last message is the {turns[-1][0]}'s; a prompt ends with a user turn")
    return turns


def read_prompts(path: str, tokenizer, seq_length: int, max_new_tokens: int) -> list[list[int]]:
    """The prompts of ``path`` as token ids, each checked to leave ``max_new_tokens`` of room in ``seq_length``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise ConfigError(f"{FLAG} {path}: cannot read it ({e.strerror or e})") from None
    prompts = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{FLAG} {path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
        ids = encode_generation_prompt(_turns(record, where), tokenizer)
        if len(ids) + max_new_tokens > seq_length:
            raise ConfigError(f"{where}: the prompt is {len(ids)} tokens, which with --max-new-tokens {max_new_tokens} "
                              f"exceeds the context (--seq-length {seq_length}); shorten it, lower --max-new-tokens "
                              "or raise --seq-length")
        prompts.append(ids)
    if not prompts:
        raise ConfigError(f"{FLAG} {path} holds no prompts; give one JSON object per line")
    return prompts


def iteration_prompts(num_prompts: int, iteration: int, per_iteration: int, seed: int) -> list[int]:
    """The prompt indices of ``iteration``: consecutive places in a stream of epochs, each epoch the whole set in
    an order drawn from (``seed``, epoch), so that a resumed run draws what the uninterrupted one would."""
    orders: dict[int, list[int]] = {}
    indices = []
    for place in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, offset = divmod(place, num_prompts)
        if epoch not in orders:
            orders[epoch] = list(range(num_prompts))
            random.Random(seed * 100_003 + epoch).shuffle(orders[epoch])
        indices.append(orders[epoch][offset])
    return indices
