"""The one exception type users see.

Every check of user input (a config key, a dataset path, a privacy parameter)
raises `PrivImageError` with a one-line message that names what was wrong. The
CLI prints it as ``error: <message>`` and exits with status 2, so a bad input
never ends in a bare traceback. It subclasses `ValueError` so that library
callers can catch the familiar type.
"""


class PrivImageError(ValueError):
    """A user-facing error: bad input, missing data, or a refused operation."""


class DataError(PrivImageError):
    """A dataset is missing, corrupt, or does not have the expected shape."""


class ConfigError(PrivImageError):
    """A profile file or override names an unknown key or has a wrong type."""


class PrivacyError(PrivImageError):
    """A privacy parameter is invalid, or a ledger disagrees with its run."""
