"""What every entry point runs: resolve and check the config, then train.

Every check that needs no process group runs first (training/preflight.py), so a wrong flag
costs a second, not a cluster allocation: one line on stderr and exit code 2.
"""

import os
import sys

from megatron_qwen.config.arguments import parse_run_config
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.platform.notices import silence_megatron_notices


def main(recipe: Recipe, argv: list[str] | None = None) -> dict:
    """Run a job; returns the last logged figures (for tests and the demo)."""
    silence_megatron_notices()
    from megatron_qwen.data import DataPathError
    from megatron_qwen.tokenizer import TokenizerFileError
    from megatron_qwen.training.preflight import check_run

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    user_errors = (ConfigError, DataPathError, TokenizerFileError)
    try:
        cfg = parse_run_config(recipe, argv)
        check_run(cfg, world_size)
    except user_errors as e:
        _exit_with(e)

    from megatron_qwen.platform.distributed import destroy_distributed
    from megatron_qwen.training.anomalies import TrainingHalted
    from megatron_qwen.training.loop import train

    try:
        return train(cfg, world_size)
    except user_errors as e:  # found only once a checkpoint is opened
        _exit_with(e)
    except TrainingHalted as e:  # every rank raises it at the same iteration
        _exit_with(e, code=1)
    finally:
        destroy_distributed()


def _exit_with(error: Exception, code: int = 2):
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)
