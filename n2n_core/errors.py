"""Error types whose message names the problem and the fix; the CLI prints them as one line."""


class N2NError(Exception):
    """Base class: anything the user can fix by changing input, configuration or data."""


class ConfigError(N2NError, ValueError):
    """A configuration value, noise style, method or data-set name that is not valid."""


class DataError(N2NError):
    """A missing, unreadable or corrupt data file or directory."""


class CheckpointError(N2NError):
    """A checkpoint that is damaged or belongs to another run, method or version."""


class NoiseNotSupported(ConfigError):
    """A method that cannot model the run's noise style (the grid leaves such pairs out)."""


class TrainingSetNotSupported(NoiseNotSupported):
    """A method that cannot train on the run's training set (N2C or N2N on noisy:SET); a
    NoiseNotSupported, so the grid lists the pair as not applicable in the same way."""


class StorageError(N2NError):
    """A file that could not be written (disk full, no permission); the previous one is kept."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), cut to
    `limit` characters: what a one-line error quotes from a library's multi-line message."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
