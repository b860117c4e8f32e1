"""The published scores of Qwen's base models on the benchmarks of tools/evaluate.py, in percent.

Source: QwenLM/Qwen README.md, "Performance" table (commit 85cb093f20e1faa1d772d6abe8458661f3b09202),
which the Qwen technical report's Table 2 (arXiv:2309.16609) reports for 7B and 14B; its 1.8B row is the
released Qwen-1.8B's (November 2023). Shot counts in the same table: docs/qwen.md section 10.
"""

from __future__ import annotations

SOURCE = "QwenLM/Qwen README 'Performance' (Qwen report, Table 2)"
PUBLISHED = {
    "1.8b": {"mmlu": 45.3, "ceval": 56.1, "gsm8k": 32.3, "math": 2.3, "humaneval": 15.2, "mbpp": 14.2, "bbh": 22.3},
    "7b": {"mmlu": 58.2, "ceval": 63.5, "gsm8k": 51.7, "math": 11.6, "humaneval": 29.9, "mbpp": 31.6, "bbh": 45.0},
    "14b": {"mmlu": 66.3, "ceval": 72.1, "gsm8k": 61.3, "math": 24.8, "humaneval": 32.3, "mbpp": 40.8, "bbh": 53.4},
}
# (hidden size, layers) of each published shape (docs/qwen.md section 1)
SHAPES = {(2048, 24): "1.8b", (4096, 32): "7b", (5120, 40): "14b"}


def size_of(hf_config: dict) -> str | None:
    """The published model size with this config.json's shape, if any."""
    return SHAPES.get((hf_config.get("hidden_size"), hf_config.get("num_hidden_layers")))
