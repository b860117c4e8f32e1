"""Every path a checkpoint names stays inside it: a manifest entry, a weight index's file name."""

import os

from megatron_qwen.config.errors import ConfigError


def outside(root: str, name) -> str | None:
    """Why the name ``name``, found in a file of ``root``, does not name a file inside ``root`` (None if it
    does): not a string, absolute, with a ``..`` part, or resolving (through links) outside ``root``."""
    if not isinstance(name, str) or not name or "\0" in name:
        return f"{name!r} is not a file name"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return f"{name!r} is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"{name!r} climbs out with '..'"
    top = os.path.realpath(root)
    if os.path.commonpath([top, os.path.realpath(os.path.join(root, name))]) != top:
        return f"{name!r} resolves outside {root}"
    return None


def contained(root: str, name, source: str) -> str:
    """``root/name`` for a name read from the file ``source``; ConfigError in one line if it leaves ``root``."""
    problem = outside(root, name)
    if problem:
        raise ConfigError(f"{source}: {problem}; a checkpoint names only files inside its own directory "
                          "(the file was edited or is not what it claims); restore it from the original")
    return os.path.join(root, name)
