"""User-facing errors.

Every mistake a user can make (bad data, bad flags, unreachable server, a finished run folder) is
raised as a :class:`FedShieldError` whose message is one line naming *what* is wrong, *where* (file,
row, flag) and *the fix*. The CLIs print that line and exit with :attr:`FedShieldError.exit_code`;
library code never prints or calls ``sys.exit``.
"""

from __future__ import annotations


class FedShieldError(Exception):
    """A user-facing error with a one-line message and an exit code (2 by default)."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # One line only: a multi-line message would break the CLI contract.
        super().__init__(" ".join(message.split()))


class DataError(FedShieldError):
    """A site's data folder is missing, empty or malformed."""


class ConfigError(FedShieldError):
    """A flag, run configuration or ``fedshield.toml`` value is invalid."""


class TaskNotFoundError(ConfigError):
    """The task name is not in the registry."""


class ServerUnreachableError(FedShieldError):
    """The coordinator could not be reached in the allotted time."""


class RunFolderError(FedShieldError):
    """The run folder cannot be used (for example it holds a finished run)."""
