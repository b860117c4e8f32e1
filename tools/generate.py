"""Generate text from a checkpoint with the KV cache (megatron_qwen/inference/generate.py).

    python tools/generate.py --load runs/demo/ckpt/sft --prompt "1 + 2 =" --prompt "def f(x):" --greedy
    python tools/generate.py --load runs/demo/ckpt/sft --chat --prompt "What is 7 * 8?" --temperature 0.7 \\
        --top-p 0.8 --seed 1 --json

--load is a --save directory of ours, saved at any layout, or a Hugging Face model directory (Qwen-1
or Qwen2 layout, docs/checkpoints.md); the model runs in this one process. All prompts run as one
batch. Greedy unless a sampling flag (--temperature, --top-k, --top-p, --seed) is given or the
checkpoint's generation_config.json samples (a Hugging Face directory's; flags override each of its
values, --greedy turns its sampling off); --repetition-penalty as transformers applies it. Generation
stops at <|endoftext|>, <|im_end|> or --max-new-tokens; the stop token is not printed. --chat wraps
each prompt as a user turn in ChatML, after Qwen's default system turn, and opens the assistant's
turn; it also stops at <|im_start|>. --json prints one object per prompt: {"prompt", "ids", "text"}.
--max-position-embeddings lifts the checkpoint's position limit (with a warning).

Past the training length: --dynamic-ntk, --logn-attn and --window-attn switch on Qwen's training-free
long-context techniques (docs/long_context.md).
"""

import argparse
import dataclasses
import json
import sys

from megatron_qwen.checkpointing.resolver import Use, resolve
from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.model.long_context import (
    LongContextSettings,
    add_long_context_arguments,
    set_long_context,
    window_schedule,
)
from megatron_qwen.platform.notices import silence_megatron_notices
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.tokenizer.chatml import encode_generation_prompt, validate_messages
from megatron_qwen.tokenizer.files import TokenizerFileError, add_unpublished_flag, check_published


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="tools/generate.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True,
                   help="a --save directory of a training run (any layout) or a Hugging Face model directory")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in ChatML as a user turn")
    p.add_argument("--greedy", action="store_true", help="the most likely token at each step (the default)")
    p.add_argument("--temperature", type=float, default=None, help="sample; logits are divided by this (1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="sample from the most likely tokens up to this mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed: the same seed gives the same output")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="transformers' repetition penalty: logits of ids already in the text divided by it when "
                        "positive, multiplied when negative (1: none)")
    p.add_argument("--tokenizer-model", default=None, help="qwen.tiktoken (default: the fetched copy)")
    add_unpublished_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt: prompt, ids, text")
    add_long_context_arguments(p, switches=True)
    return p


def long_context_of(args, num_layers: int, train_length: int) -> LongContextSettings:
    """The techniques the flags switch on (all off: the plain model)."""
    windows = None if args.window_attn is None else window_schedule(num_layers, args.window_attn)
    return LongContextSettings(train_length=args.train_length or train_length, dynamic_ntk=args.dynamic_ntk,
                       logn_attn=args.logn_attn, windows=windows)


def sampling_of(args, defaults=(None, 1.0)):
    """(Sampling or None for greedy decoding, repetition penalty): the checkpoint's ``defaults`` (from its
    generation_config.json, inference.generation_defaults), each overridden by the flags given."""
    # deferred: megatron-core takes seconds to import; the arguments are checked before
    from megatron_qwen.inference import Sampling

    flags = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    given = {k: v for k, v in flags.items() if v is not None}
    if args.greedy and given:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--greedy contradicts {names}; pass either --greedy or sampling flags")
    checkpoint_sampling, checkpoint_penalty = defaults
    penalty = checkpoint_penalty if args.repetition_penalty is None else args.repetition_penalty
    if args.greedy or not (given or checkpoint_sampling):
        return None, penalty
    return dataclasses.replace(checkpoint_sampling or Sampling(), **given), penalty


def stop_ids(tokenizer, chat: bool) -> set[int]:
    """<|endoftext|> and <|im_end|>; in chat also <|im_start|>: a reply that opens another turn has ended."""
    return {tokenizer.eod, tokenizer.im_end_id, *([tokenizer.im_start_id] if chat else [])}


def prompt_ids(text: str, chat: bool, tokenizer) -> list[int]:
    if not chat:
        return tokenizer.tokenize(text)

    return encode_generation_prompt(validate_messages([{"role": "user", "content": text}], require_assistant=False),
                                    tokenizer)


def run(args) -> list[dict]:
    # What needs no model comes first: a mistyped flag is reported without waiting for a load.
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    # deferred: megatron-core takes seconds to import; the arguments are checked before
    from megatron_qwen.inference import generate, generation_defaults, load_model_for_inference

    defaults = generation_defaults(args.load)
    sampling, penalty = sampling_of(args, defaults)
    resolve(args.load).check_for(Use.GENERATE)
    if defaults[0] is not None and sampling is not None:
        print(f"sampling as {args.load}/generation_config.json says, flags overriding: {sampling}; --greedy for "
              "greedy decoding", file=sys.stderr, flush=True)

    check_published(args.tokenizer_model, args.allow_unpublished_tokenizer)
    tokenizer = load_tokenizer(args.tokenizer_model)
    prompts = [prompt_ids(text, args.chat, tokenizer) for text in args.prompt]
    model = load_model_for_inference(args.load, args.max_position_embeddings)  # ours at any layout, or Hugging Face
    if model.head != "lm":
        raise ConfigError(f"--load {args.load} holds a reward model, which scores text and generates none; score "
                          "with tools/evaluate_reward.py")
    if model.vocab_size_unpadded < tokenizer.vocab_size:
        raise ConfigError(f"--load {args.load}: the model knows {model.vocab_size_unpadded} token ids, the Qwen "
                          f"tokenizer {tokenizer.vocab_size}; this checkpoint was not trained on Qwen's vocabulary")
    settings = long_context_of(args, model.config.num_layers, model.train_length)
    if settings.active:
        set_long_context(model, settings)
    outputs = generate(model, prompts, args.max_new_tokens, stop_ids(tokenizer, args.chat), sampling,
                       repetition_penalty=penalty)
    return [{"prompt": text, "ids": ids, "text": tokenizer.detokenize(ids)} for text, ids in zip(args.prompt, outputs)]


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (ConfigError, TokenizerFileError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    for i, result in enumerate(results):
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        else:
            print(f"--- prompt {i + 1}: {result['prompt']}\n{result['text']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
