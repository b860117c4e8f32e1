"""lm-eval's hooks for HumanEval and MBPP: the program a sample runs, and its pass@1 through our sandbox
(lm-eval's own code_eval metric executes model code in-process, unsandboxed, and loads from the hub)."""

from __future__ import annotations

from megatron_qwen.evaluation.sandbox import SandboxLimits, run_program


def humaneval_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval filter: the completion is the function body, so the program is the prompt plus it."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_1(references: list[str], predictions: list) -> float:
    """1.0 when the (first) program followed by the reference tests exits cleanly in the sandbox."""
    program = predictions[0][0] if isinstance(predictions[0], list) else predictions[0]
    return float(run_program(f"{program}\n\n{references[0]}\n", SandboxLimits.from_env()).passed)
