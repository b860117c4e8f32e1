"""Exact-match accuracy of a checkpoint on held-out arithmetic problems (greedy decoding).

    python examples/demo/evaluate_arithmetic.py --checkpoint runs/demo/ckpt/sft \\
        --problems runs/demo/math/heldout.jsonl --output runs/demo/eval_sft.json

Runs in its own process (one CPU process, whatever layout the checkpoint was saved at). Prints
the accuracy and a few examples; --output gets {"accuracy", "correct", "total", "examples"}.
"""

import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")  # megatron-core's notices about optional GPU libraries
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from arithmetic import exact_match, read_conversations  # noqa: E402

MAX_ANSWER_TOKENS = 6  # answers are at most 3 digits; the tokenizer splits numbers into digits


def prompt_ids(question: str, tokenizer) -> list[int]:
    """The ChatML ids training saw before the answer: the user turn, then the assistant header.
    Encoded as a conversation with an empty answer, minus that answer's closing tokens, so it
    matches the SFT data token for token."""
    from megatron_qwen.tokenizer import encode_chat

    ids, _ = encode_chat([{"role": "user", "content": question}, {"role": "assistant", "content": ""}], tokenizer)
    closing = [tokenizer.im_end_id, *tokenizer.tokenize("\n")]
    if ids[-len(closing):] != closing:
        raise RuntimeError(f"encode_chat no longer ends a turn with <|im_end|>\\n ({ids[-len(closing):]}); "
                           "update prompt_ids to the new ChatML layout")
    return ids[:-len(closing)]


def evaluate(checkpoint: str, problems_file: str, tokenizer_model: str | None) -> dict:
    from megatron_qwen.inference import generate, load_model_for_inference
    from megatron_qwen.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_model)
    pairs = read_conversations(problems_file)
    model = load_model_for_inference(checkpoint)
    outputs = generate(model, [prompt_ids(q, tokenizer) for q, _ in pairs], MAX_ANSWER_TOKENS,
                       {tokenizer.im_end_id, tokenizer.eod})
    predictions = [tokenizer.detokenize(ids) for ids in outputs]
    references = [a for _, a in pairs]
    accuracy = exact_match(predictions, references)
    examples = [{"question": q, "answer": a, "prediction": p} for (q, a), p in zip(pairs, predictions)]
    return {"accuracy": accuracy, "correct": round(accuracy * len(pairs)), "total": len(pairs),
            "examples": examples[:8]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a --save directory of a training run")
    parser.add_argument("--problems", required=True, help="jsonl of ChatML conversations (arithmetic.py)")
    parser.add_argument("--tokenizer-model", default=None, help="qwen.tiktoken (default: the fetched copy)")
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    for flag, path in (("--checkpoint", args.checkpoint), ("--problems", args.problems)):
        if not os.path.exists(path):
            print(f"evaluate_arithmetic: error: {flag} {path}: not found", file=sys.stderr)
            return 1
    result = evaluate(args.checkpoint, args.problems, args.tokenizer_model)
    print(f"exact match on {result['total']} held-out problems: {result['accuracy']:.1%}")
    for ex in result["examples"][:4]:
        print(f"  {ex['question']} -> {ex['prediction']!r} (answer {ex['answer']})")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
