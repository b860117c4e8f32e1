"""The Qwen report's published scores on the benchmarks of tools/evaluate.py, in percent, exactly as the report
prints them, each with its table (QWEN_TECHNICAL_REPORT.pdf of QwenLM/Qwen, the arXiv:2309.16609 version;
docs/qwen.md section 10 restates the tables and their settings).

- Table 2: base models, few-shot (the report's shot counts).
- Table 5: chat models; the zero-shot column (--chat runs zero-shot, as Qwen's chat scripts).
- Table 10: HumanEval and MBPP pass@1 of Qwen-Chat, Code-Qwen and Code-Qwen-Chat.
- Table 12: GSM8K and MATH of Qwen-Chat and Math-Qwen-Chat, greedy; its MATH is the 500-problem test subset of
  Lightman et al. (2023), not the full test set.
"""

from __future__ import annotations

from megatron_qwen.config.errors import ConfigError

FAMILIES = ("qwen", "code-qwen", "math-qwen")  # --published


def _rows(table: str, columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict:
    """{size: {benchmark: (score, table)}} from one table's rows."""
    return {size: {b: (v, table) for b, v in zip(columns, values)} for size, values in rows.items()}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for size, scores in part.items():
            out.setdefault(size, {}).update(scores)
    return out


TABLE_2 = _rows("Table 2", ("mmlu", "ceval", "gsm8k", "math", "humaneval", "mbpp", "bbh"), {
    "1.8b": (44.6, 54.7, 21.2, 5.6, 17.1, 14.8, 28.2),
    "7b": (58.2, 63.5, 51.7, 11.6, 29.9, 31.6, 45.0),
    "14b": (66.3, 72.1, 61.3, 24.8, 32.3, 40.8, 53.4)})
TABLE_5_ZERO_SHOT = _rows("Table 5, 0-shot", ("mmlu", "ceval", "gsm8k", "humaneval", "bbh"), {
    "1.8b": (42.4, 50.7, 27.8, 14.6, 27.1),
    "7b": (55.8, 59.7, 50.3, 37.2, 39.6),
    "14b": (64.6, 69.8, 60.1, 43.9, 46.9)})
TABLE_10_QWEN_CHAT = _rows("Table 10", ("mbpp",), {"7b": (35.8,), "14b": (46.4,)})
TABLE_12_QWEN_CHAT = _rows("Table 12, MATH500", ("math",), {"7b": (6.8,), "14b": (18.4,)})
# (family, chat) -> {size: {benchmark: (score, table)}}
PUBLISHED = {
    ("qwen", False): TABLE_2,
    ("qwen", True): _merge(TABLE_5_ZERO_SHOT, TABLE_10_QWEN_CHAT, TABLE_12_QWEN_CHAT),
    ("code-qwen", False): _rows("Table 10", ("humaneval", "mbpp"), {"7b": (40.2, 41.8), "14b": (45.1, 51.4)}),
    ("code-qwen", True): _rows("Table 10", ("humaneval", "mbpp"), {"7b": (43.3, 44.2), "14b": (66.4, 52.4)}),
    ("math-qwen", True): _merge(_rows("Table 12", ("gsm8k",), {"7b": (62.5,), "14b": (69.8,)}),
                                _rows("Table 12, MATH500", ("math",), {"7b": (17.2,), "14b": (24.2,)})),
}
MODEL_NAMES = {("qwen", False): "Qwen", ("qwen", True): "Qwen-Chat", ("code-qwen", False): "Code-Qwen",
               ("code-qwen", True): "Code-Qwen-Chat", ("math-qwen", True): "Math-Qwen-Chat"}
SIZES = ("1.8b", "7b", "14b")
# (hidden size, layers) of each published shape (docs/qwen.md section 1)
SHAPES = {(2048, 24): "1.8b", (4096, 32): "7b", (5120, 40): "14b"}


def published_for(family: str, chat: bool) -> dict:
    """{size: {benchmark: (score, table)}} of the family's base or chat model; one line if the report has none."""
    if (family, chat) not in PUBLISHED:
        raise ConfigError(f"--published {family}: the report publishes only {MODEL_NAMES[(family, not chat)]}"
                          + (": add --chat" if not chat else ": leave out --chat"))
    return PUBLISHED[(family, chat)]


def size_of(model) -> str | None:
    """The published model size with this model's shape (a config.model.QwenModelConfig), if any."""
    return SHAPES.get((model.hidden_size, model.num_layers))
