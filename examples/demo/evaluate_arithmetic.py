"""The held-out arithmetic check, measured by lm-evaluation-harness: the problems are written as a
GSM8K-format local task (question, answer ending "#### N") and tools/evaluate.py runs it on the checkpoint as
Qwen's chat GSM8K script does (--chat, --protocol qwen: the question alone as the user turn after the default
system turn, the ChatML the SFT data was encoded with; greedy; the reply's last number against the answer's,
equal within 1e-4; docs/evaluation.md).

    python examples/demo/evaluate_arithmetic.py --checkpoint runs/demo/ckpt/sft \\
        --problems runs/demo/math/heldout.jsonl --output runs/demo/eval_sft.json

--output gets {"accuracy", "correct", "total", "examples"}; the harness's own report (scores, per-sample
log) lies beside it, in <output>.harness.json.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from arithmetic import read_conversations  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ANSWER_TOKENS = 6  # answers are at most 3 digits; the tokenizer splits numbers into digits
FILTER, METRIC = "qwen", "numbers_equal"  # tools/evaluate.py's GSM8K under --protocol qwen --chat


def write_gsm8k_task(problems_file: str, data_dir: str) -> int:
    """The conversations as GSM8K's test.jsonl under ``data_dir``; returns how many."""
    pairs = read_conversations(problems_file)
    os.makedirs(os.path.join(data_dir, "gsm8k"), exist_ok=True)
    with open(os.path.join(data_dir, "gsm8k", "test.jsonl"), "w", encoding="utf-8") as f:
        for question, answer in pairs:
            f.write(json.dumps({"question": question, "answer": f"#### {answer}"}) + "\n")
    return len(pairs)


def evaluate(checkpoint: str, problems_file: str, output: str) -> dict:
    data_dir = output + ".data"
    total = write_gsm8k_task(problems_file, data_dir)
    harness = output + ".harness.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "evaluate.py"), "--load", checkpoint, "--data-dir", data_dir,
           "--tasks", "gsm8k", "--chat", "--max-gen-toks", str(MAX_ANSWER_TOKENS), "--batch-size", "32",
           "--output", harness]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/evaluate.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip())
    report = json.load(open(harness, encoding="utf-8"))
    samples = sorted((s for s in report["samples"]["qwen_gsm8k"] if s["filter"] == FILTER), key=lambda s: s["doc_id"])
    correct = sum(s[METRIC] for s in samples)
    examples = [{"question": s["doc"]["question"], "answer": s["target"], "prediction": s["resps"][0][0]}
                for s in samples[:8]]
    return {"accuracy": report["scores"]["gsm8k"]["score"] / 100, "correct": round(correct), "total": total,
            "examples": examples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a --save directory of a training run")
    parser.add_argument("--problems", required=True, help="jsonl of ChatML conversations (arithmetic.py)")
    parser.add_argument("--output", required=True, help="write the result as JSON here")
    args = parser.parse_args()
    for flag, path in (("--checkpoint", args.checkpoint), ("--problems", args.problems)):
        if not os.path.exists(path):
            print(f"evaluate_arithmetic: error: {flag} {path}: not found", file=sys.stderr)
            return 2
    result = evaluate(args.checkpoint, args.problems, args.output)
    print(f"accuracy on {result['total']} held-out problems (Qwen's chat GSM8K protocol): {result['accuracy']:.1%}")
    for ex in result["examples"][:4]:
        print(f"  {ex['question']} -> {ex['prediction']!r} (answer {ex['answer']})")
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
