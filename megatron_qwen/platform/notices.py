"""megatron-core's notices that say nothing to our users, silenced in one place."""

import warnings


def silence_megatron_notices() -> None:
    """Import-time warnings about optional GPU kernels (the back end in use is printed instead) and
    megatron-core's warnings about its own deprecated calls."""
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed.*")
    warnings.filterwarnings("ignore", message=r"(full scope|`load_state_dict`) is deprecated")
    warnings.filterwarnings("ignore", message=r".*deprecating ShardedTensor")
