"""Every path a checkpoint names stays inside it: a manifest entry, a weight index's file name, a shard
that `.metadata` points to."""

import os

from megatron_qwen.config.errors import ConfigError


def outside(root: str, name) -> str | None:
    """Why the name ``name``, found in a file of ``root``, does not name a file inside ``root`` (None if it
    does): not a string, absolute, or with a ``..`` part. Links are the owner's choice and are followed (the
    Hugging Face hub's cache links each file of a model to a blob outside its directory)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return f"{name!r} is not a file name"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return f"{name!r} is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"{name!r} climbs out with '..'"
    return None


def contained(root: str, name, source: str) -> str:
    """``root/name`` for a name read from the file ``source``; ConfigError in one line if it leaves ``root``."""
    problem = outside(root, name)
    if problem:
        raise ConfigError(f"{source}: {problem}; a checkpoint names only files inside its own directory "
                          "(the file was edited or is not what it claims); restore it from the original")
    return os.path.join(root, name)
