"""The task configurations of one protocol, written as a folder of YAML files that lm-eval reads with
`include_path` (tools/evaluate.py) or `lm_eval --include_path` (the same tasks from lm-eval's own CLI).

Both protocols run on lm-eval's engine: a protocol is the task configurations and filters it writes
(protocol_qwen.py, protocol_qwen_chat.py, protocol_lm_eval.py), never a loop of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation import protocol_lm_eval, protocol_qwen, protocol_qwen_chat
from megatron_qwen.evaluation.benchmarks import Benchmark
from megatron_qwen.evaluation.lm_eval_config import dump

PROTOCOLS = ("qwen", "lm-eval")


@dataclass(frozen=True)
class Protocol:
    name: str  # --protocol
    chat: bool  # --chat
    task_config: Callable[[Benchmark, str, str | None], dict]
    headline: dict[str, str]  # benchmark -> lm-eval's metric key of its score
    subject_mean: frozenset[str]  # benchmarks scored as the mean over subjects (else over all questions)
    gsm8k_exemplar_file: bool = False  # reads Qwen's gsm8k_prompt.txt from --data-dir

    def headline_key(self, bench: Benchmark) -> str:
        return self.headline[bench.name]


def protocol(name: str, chat: bool) -> Protocol:
    if name == "lm-eval":
        return Protocol(name, chat, lambda b, root, s: protocol_lm_eval.task_config(b, root, s, chat),
                        protocol_lm_eval.HEADLINE, protocol_lm_eval.SUBJECT_MEAN)
    if name != "qwen":
        raise ConfigError(f"--protocol {name}: choose from {', '.join(PROTOCOLS)}")
    if chat:
        return Protocol(name, chat, protocol_qwen_chat.task_config, protocol_qwen_chat.HEADLINE,
                        protocol_qwen_chat.SUBJECT_MEAN)
    return Protocol(name, chat, protocol_qwen.task_config, protocol_qwen.HEADLINE, protocol_qwen.SUBJECT_MEAN,
                    gsm8k_exemplar_file=True)


def group_config(bench: Benchmark, proto: Protocol) -> dict:
    """The benchmark's score over its subjects: the mean over all questions, or over subjects (SUBJECT_MEAN)."""
    metric, filtered = proto.headline_key(bench).split(",")
    return {"group": bench.lm_eval_name, "task": [bench.task_name(s) for s in bench.subjects],
            "aggregate_metric_list": [{"metric": metric, "aggregation": "mean", "filter_list": filtered,
                                       "weight_by_size": bench.name not in proto.subject_mean}],
            "metadata": {"version": 1.0}}


def write_task_configs(benchmarks: list[Benchmark], root: str, out_dir: str, proto: Protocol) -> str:
    """Writes the configurations of ``benchmarks`` reading ``root`` into ``out_dir``; returns it."""
    os.makedirs(out_dir, exist_ok=True)
    for bench in benchmarks:
        configs = [proto.task_config(bench, root, s) for s in bench.subjects or (None,)]
        if bench.subjects:
            configs.append(group_config(bench, proto))
        for cfg in configs:
            dump(cfg, os.path.join(out_dir, f"{cfg.get('group', cfg.get('task'))}.yaml"))
    return out_dir
