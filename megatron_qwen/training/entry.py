"""What every entry point runs: resolve and check the config, then train.

The checks run before megatron-core is even imported, so a wrong flag costs a second, not a
cluster allocation.
"""

import os
import sys
import warnings

from megatron_qwen.config.arguments import parse_run_config
from megatron_qwen.config.parallel import ConfigError
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.training.checkpoint_dirs import check_paths


def main(recipe: Recipe, argv: list[str] | None = None) -> dict:
    """Run a job; returns the last logged figures (for tests and the demo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = parse_run_config(recipe, argv)
        cfg.validate(world_size)
        check_paths(cfg.checkpoint)
    except ConfigError as e:
        sys.exit(f"error: {e}")

    # megatron-core warns on import when the optional GPU kernels are missing; the back end
    # choice is printed at start instead.
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed.*")
    warnings.filterwarnings("ignore", message="full scope is deprecated")  # megatron-core's own default
    from megatron_qwen.data import DataPathError
    from megatron_qwen.platform.distributed import destroy_distributed
    from megatron_qwen.training.loop import train

    try:
        return train(cfg, world_size)
    except (ConfigError, DataPathError) as e:  # found once the data or a checkpoint is opened
        sys.exit(f"error: {e}")
    finally:
        destroy_distributed()
