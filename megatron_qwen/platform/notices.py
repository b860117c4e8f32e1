"""Notices: megatron-core's that say nothing to our users, silenced in one place, and our one-line notes."""

import os
import warnings


def silence_megatron_notices() -> None:
    """Import-time warnings about optional GPU kernels (the back end in use is printed instead) and
    megatron-core's warnings about its own deprecated calls."""
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed.*")
    warnings.filterwarnings("ignore", message=r"(full scope|`load_state_dict`) is deprecated")
    warnings.filterwarnings("ignore", message=r".*deprecating ShardedTensor")


def notice(line: str) -> None:
    """A one-line note to the user from the checks before any process group: printed by rank 0 only (the
    launcher's RANK), so a job of many processes says it once."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)
