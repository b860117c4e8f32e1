"""What every entry point runs: resolve and check the config, then train.

Every check that needs no process group runs first (training/preflight.py), so a wrong flag
costs a second, not a cluster allocation: one line on stderr and exit code 2.
"""

import os
import re
import sys

import torch.distributed as dist

from megatron_qwen.checkpointing.directory import latest_iteration
from megatron_qwen.checkpointing.writer_lock import release
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import Recipe
from megatron_qwen.data import DataPathError
from megatron_qwen.platform.notices import notice, silence_megatron_notices
from megatron_qwen.tokenizer import TokenizerFileError
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.preflight import check_run


def main(recipe: Recipe, argv: list[str] | None = None) -> dict:
    """Run a job; returns the last logged figures (for tests and the demo)."""
    silence_megatron_notices()

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    user_errors = (ConfigError, DataPathError, TokenizerFileError)
    notes: list[str] = []
    try:
        cfg = parse_run_config(recipe, argv, notes)
        check_run(cfg, world_size)
    except user_errors as e:
        _exit_with(e)
    for line in notes:
        notice(line)

    # deferred: megatron-core takes seconds to import; a wrong flag is refused before (check_run)
    from megatron_qwen.platform.distributed import destroy_distributed
    from megatron_qwen.training.anomalies import TrainingHalted
    from megatron_qwen.training.loop import train
    from megatron_qwen.training.ppo_loop import train_ppo

    run = train_ppo if cfg.data.data_format == "prompts" else train  # PPO iterates its own way (ppo_loop.py)
    try:
        return run(cfg, world_size)
    except user_errors as e:  # found only once a checkpoint is opened
        _exit_with(e)
    except TrainingHalted as e:  # every rank raises it at the same iteration
        _exit_with(e, code=1)
    except RuntimeError as e:
        if not _is_peer_failure(e):
            raise
        _exit_with(_peer_failure_message(e, cfg), code=1)
    finally:
        destroy_distributed()
        release(cfg.checkpoint.save)  # held since preflight (the kernel frees it anyway when the process ends)


# What gloo and NCCL raise on the surviving ranks when another process of the job died or hangs.
_PEER_FAILURE = re.compile(r"Connection (reset|closed) by peer|timed out|Timeout|NCCL communicator was aborted")


def _is_peer_failure(error: RuntimeError) -> bool:
    return isinstance(error, dist.DistError) or bool(_PEER_FAILURE.search(str(error)))


def _peer_failure_message(error: RuntimeError, cfg) -> str:
    """One line instead of a traceback per rank: what happened, and where the run resumes from."""
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    save = cfg.checkpoint.save
    latest = latest_iteration(save) if save and os.path.isdir(save) else None
    resume = (f"the last complete checkpoint is iteration {latest} under --save {save}; the same command resumes it"
              if latest is not None else "no checkpoint has been saved (--save)")
    return f"rank {rank}: another process of this job failed or stopped responding ({cause}); {resume}"


def _exit_with(error: Exception, code: int = 2):
    message = str(error)
    if "\nOriginal Traceback" in message:  # raised in a DataLoader worker: torch wraps it in the traceback
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
