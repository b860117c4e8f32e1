"""A reward model's accuracy on comparison sets, as the Qwen report's Table 4 measures it (section 3.2.1,
docs/qwen.md section 11): the share of pairs whose preferred response gets the strictly higher reward.

The public sets of Table 4 are read from local files in their published formats (data/preference.py), one
folder each under --data-dir; more sets in our own jsonl format come as NAME=FILE. Each sequence is what the
reward model trained on (tokenizer/chatml.py's encode_reward_sequence, cut like data/pairs.py's samples),
scored in one process by the checkpoint's own model (TP1, PP1), read at the end token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.data.pairs import reward_sample
from megatron_qwen.data.preference import PAIR_FIELDS, pair_record_checker
from megatron_qwen.data.sources import parse_block, read_blocks
from megatron_qwen.inference.generate import load_model_for_inference
from megatron_qwen.model.reward import end_token_values
from megatron_qwen.tokenizer.chatml import DEFAULT_SYSTEM_PROMPT, encode_reward_sequence

SOURCE = "Qwen technical report, Table 4 (arXiv:2309.16609)"
# Table 4's columns in its order: (heading, --data-dir folder or None for Qwen's internal sets, format,
# published accuracy of Qwen's PMP and RM models in %).
TABLE4 = [
    ("QWEN Helpful-base", None, None, 62.68, 74.78),
    ("QWEN Helpful-online", None, None, 61.62, 69.71),
    ("Anthropic Helpful-base", "anthropic_helpful_base", "anthropic-hh", 76.52, 73.98),
    ("Anthropic Helpful-online", "anthropic_helpful_online", "anthropic-hh", 65.43, 64.57),
    ("OpenAI Summ.", "openai_summarize", "openai-summarize", 69.60, 69.99),
    ("Stanford SHP", "stanford_shp", "stanford-shp", 60.05, 60.10),
    ("OpenAI PRM800K", "prm800k", "prm800k", 70.59, 70.52),
]
SET_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".parquet")  # .json: JSON lines, as published
MAX_SHOWN = 5  # malformed records printed per set, the rest counted


@dataclass
class PairSet:
    """One set's pairs as token ids (chosen, rejected), and what reading them found."""

    name: str
    files: list[str]
    pairs: list[tuple[list[int], list[int]]] = field(default_factory=list)
    malformed: int = 0
    examples: list[str] = field(default_factory=list)


def set_files(directory: str) -> list[str]:
    """The set's files in a --data-dir folder, sorted."""
    found = [os.path.join(root, n) for root, _, names in os.walk(directory) for n in names]
    return sorted(f for f in found if f.endswith(SET_FILE_SUFFIXES))


def read_set(name: str, files: list[str], fmt: str, tokenizer, default_system: str | None) -> PairSet:
    """Every pair of ``files`` in ``fmt``, encoded; a malformed record is counted and located (file:line)."""
    check, out = pair_record_checker(fmt), PairSet(name, files)
    for path in files:
        for block in read_blocks(path, list(PAIR_FIELDS[fmt])):
            batch = parse_block(block, check)
            for where, reason in batch.bad:
                out.malformed += 1
                if len(out.examples) < MAX_SHOWN:
                    out.examples.append(f"{path}:{where}: {reason}")
            out.pairs += [(encode_reward_sequence(p.chosen, tokenizer, default_system),
                           encode_reward_sequence(p.rejected, tokenizer, default_system))
                          for pairs in batch.records for p in pairs]
    return out


@torch.no_grad()
def score(model, sequences: list[list[int]], seq_length: int, batch_size: int, pad_id: int) -> list[float]:
    """The reward of each sequence (its value at the end token), in its order. Sequences are batched by length,
    each batch padded to its longest (causal attention: padding after the end token changes nothing)."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = min(seq_length, max(len(sequences[i]) for i in chunk))
        samples = [reward_sample(np.asarray(sequences[i]), width, pad_id) for i in chunk]
        tokens = torch.stack([torch.from_numpy(s["tokens"]) for s in samples]).to(device)
        end = torch.tensor([int(s["end_index"]) for s in samples], device=device)
        values = model(tokens, torch.arange(width, device=device).expand_as(tokens), None)
        for i, r in zip(chunk, end_token_values(values, end).tolist()):
            rewards[i] = r
    return rewards


def accuracy(rewards: list[float]) -> float:
    """Pairs' rewards as chosen, rejected, chosen, ...: the share with the chosen one strictly higher."""
    wins = sum(c > r for c, r in zip(rewards[0::2], rewards[1::2]))
    return wins / max(1, len(rewards) // 2)


def plan_sets(data_dir: str | None, extra: list[str]) -> list[tuple[str, list[str], str | None]]:
    """(name, files, format) of every Table 4 column (no files: not evaluated) and each NAME=FILE of ours."""
    plan = []
    for name, folder, fmt, _, _ in TABLE4:
        path = os.path.join(data_dir, folder) if data_dir and folder else None
        plan.append((name, set_files(path) if path and os.path.isdir(path) else [], fmt))
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not name or not os.path.isfile(path):
            raise ConfigError(f"--pairs {item}: expected NAME=FILE, a jsonl file of {{prompt or messages, chosen, "
                              "rejected}} records")
        plan.append((name, [path], "pairs"))
    if not any(files for _, files, _ in plan):
        raise ConfigError(f"--data-dir {data_dir}: none of its folders ({', '.join(t[1] for t in TABLE4 if t[1])}) "
                          "holds a set's files, and no --pairs NAME=FILE was given (docs/qwen.md section 11)")
    return plan


def format_table(results: dict) -> str:
    """Table 4's layout: the report's PMP and RM rows, then this model's accuracy per set (n/a: no files)."""
    names = [t[0] for t in TABLE4] + [n for n in results if n not in {t[0] for t in TABLE4}]
    widths = [max(len(n), 8) for n in names]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<14}" + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))

    published = {t[0]: t[3:] for t in TABLE4}
    lines = [f"Test accuracy (%), Table 4's layout; PMP and RM rows: {SOURCE}", row("model", names)]
    for k, label in enumerate(("PMP (report)", "RM (report)")):
        lines.append(row(label, [f"{published[n][k]:.2f}" if n in published else "" for n in names]))
    ours = [f"{100 * results[n]['accuracy']:.2f}" if n in results else "n/a" for n in names]
    lines.append(row("this model", ours))
    lines.append(row("pairs", [str(results[n]["pairs"]) if n in results else "" for n in names]))
    return "\n".join(lines)


def evaluate_reward(load: str, data_dir: str | None, extra: list[str], seq_length: int | None, batch_size: int,
                    tokenizer, default_system: str | None = DEFAULT_SYSTEM_PROMPT, report=print) -> dict:
    """Accuracy per set of the reward model under ``load``; ``report`` gets the one-line notes (malformed
    records, truncation)."""
    plan = plan_sets(data_dir, extra)
    model = load_model_for_inference(load)
    if getattr(model, "head", "lm") != "reward":
        raise ConfigError(f"--load {load} holds a language model, not a reward model (python -m megatron_qwen.reward)")
    length = seq_length or model.train_length
    results = {}
    for name, files, fmt in plan:
        if not files:
            continue
        pair_set = read_set(name, files, fmt, tokenizer, default_system)
        for line in pair_set.examples:
            report(f"{name}: malformed record {line}")
        longer = sum(len(s) > length for pair in pair_set.pairs for s in pair)
        report(f"{name}: {len(pair_set.pairs)} pairs from {len(files)} file(s); {pair_set.malformed} malformed "
               f"records skipped; {longer} sequences longer than {length} tokens cut from the left")
        rewards = score(model, [s for pair in pair_set.pairs for s in pair], length, batch_size, tokenizer.eod)
        results[name] = {"accuracy": accuracy(rewards), "pairs": len(pair_set.pairs), "files": files,
                         "malformed": pair_set.malformed, "truncated": longer,
                         "published": {k: v for k, v in zip(("PMP", "RM"), _published(name))},
                         "rewards": [rewards[i:i + 2] for i in range(0, len(rewards), 2)]}  # [chosen, rejected]
    return {"load": load, "seq_length": length, "source": SOURCE, "sets": results}


def _published(name: str) -> tuple:
    return next((t[3:] for t in TABLE4 if t[0] == name), (None, None))
