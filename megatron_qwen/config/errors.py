"""The one error type of a configuration that cannot run."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming the flag and what to do."""
