"""The report's benchmarks through lm-evaluation-harness, offline (docs/evaluation.md).

benchmarks.py (the tasks and the report's shot counts), local_data.py (the files each reads under --data-dir),
task_configs.py (a protocol's task configurations, written for lm-eval), protocol_qwen.py and
protocol_qwen_chat.py (Qwen's own prompts and answer rules, base and chat), protocol_lm_eval.py (lm-eval's own
tasks), lm_eval_config.py (what they are made of), answers_qwen.py and answers_opencompass.py (the answer rules),
code_tasks.py and sandbox.py (HumanEval/MBPP execution), published.py (the report's numbers), runner.py (one
evaluation).
"""
