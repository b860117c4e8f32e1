"""The report's benchmarks through lm-evaluation-harness, offline (docs/evaluation.md).

benchmarks.py (the tasks and the report's shot counts), local_data.py (the files each reads under
--data-dir), task_configs.py (lm-eval's own task configurations pointed at those files), code_tasks.py and
sandbox.py (HumanEval/MBPP execution), published.py (the report's numbers), runner.py (one evaluation).
"""
