"""Helpers of the evaluation tests (tests/test_evaluate*.py): tiny Qwen2ForCausalLM models whose greedy replies are
fixed in advance, benchmark files in their published formats, and tools/evaluate.py run in this process.

``successor_model``: every layer's attention and MLP output projection is zero, so the last hidden state is the
embedding of the last token; each token named in ``chains`` gets a hidden direction of its own, and the output
row of its successor reads that direction. After a chain's first token the model therefore writes the chain's
reply and then <|endoftext|>, whatever came before; after any other token it writes <|endoftext|> at once.
"""

import csv
import json
import os
from pathlib import Path

import torch
import transformers

from megatron_qwen.hf.tokenizer_files import write_tokenizer_files
from megatron_qwen.tokenizer.qwen import load_tokenizer

VOCAB = 151_936
ENDOFTEXT = 151_643


def token_ids(text: str) -> list[int]:
    return load_tokenizer().tokenize(text)


def successors(chains: dict[str, str]) -> dict[int, int]:
    """token -> the token the model writes after it; a token that two chains continue differently is an error."""
    succ: dict[int, int] = {}
    for start, reply in chains.items():
        first = token_ids(start)
        assert len(first) == 1, f"{start!r} is not one token: {first}"
        ids = [*first, *token_ids(reply), ENDOFTEXT]
        for a, b in zip(ids, ids[1:]):
            assert succ.setdefault(a, b) == b, f"token {a} is continued two ways in {chains}"
    return succ


def successor_model(chains: dict[str, str]) -> transformers.Qwen2ForCausalLM:
    succ = successors(chains)
    hidden = 4 * (len(succ) // 4 + 1)  # a direction per chain token and one for the rest; even heads for RoPE
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        embed[:, 0] = 1.0
        head.zero_()
        head[ENDOFTEXT, 0] = 1.0
        for direction, (token, after) in enumerate(sorted(succ.items()), start=1):
            embed[token].zero_()
            embed[token, direction] = 1.0
            head[after, direction] = 1.0
    return model


def save_model(model, path: Path) -> Path:
    """A self-contained qwen2-layout directory (weights, tokenizer files) tools/evaluate.py takes as it is."""
    model.save_pretrained(path)
    write_tokenizer_files(str(path), 4096)
    return path


def greedy_reply(model, prompt_ids: list[int], new_tokens: int = 40) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT)
    return out[0, len(prompt_ids):].tolist()


# --- benchmark files in their published formats ------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> None:
    os.makedirs(path.parent, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_choice_csvs(root: Path, bench: str, subject: str, splits: dict[str, list[list[str]]]) -> None:
    """MMLU (no header) or C-Eval (header id,question,A,B,C,D,answer) files of one subject."""
    for split, rows in splits.items():
        folder = root / bench / split
        os.makedirs(folder, exist_ok=True)
        with open(folder / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if bench == "ceval":
                writer.writerow(["id", "question", "A", "B", "C", "D", "answer"])
            writer.writerows([[i, *r] if bench == "ceval" else r for i, r in enumerate(rows)])


def write_bbh(root: Path, task: str, examples: list[tuple[str, str]]) -> None:
    os.makedirs(root / "bbh", exist_ok=True)
    (root / "bbh" / f"{task}.json").write_text(json.dumps({"examples": [{"input": i, "target": t}
                                                                         for i, t in examples]}))


def run_evaluate(**settings) -> dict:
    """tools/evaluate.py's evaluation in this process (lm-eval imported once for every run of a test file)."""
    from megatron_qwen.evaluation.runner import EvalConfig, evaluate

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    return evaluate(EvalConfig(**settings))


def samples(report: dict, task: str, filter_name: str | None = None) -> list[dict]:
    """lm-eval's logged samples of one task in document order (of one filter)."""
    rows = [s for s in report["samples"][task] if filter_name is None or s["filter"] == filter_name]
    return sorted(rows, key=lambda s: s["doc_id"])
