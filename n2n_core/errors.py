"""Error types whose message names the problem and the fix; the CLI prints them as one line."""


class N2NError(Exception):
    """Base class: anything the user can fix by changing input, configuration or data."""


class ConfigError(N2NError, ValueError):
    """A configuration value, noise style, method or data-set name that is not valid."""


class DataError(N2NError):
    """A missing, unreadable or corrupt data file or directory."""


class CheckpointError(N2NError):
    """A checkpoint that is damaged or belongs to another run, method or version."""
