"""A per-process-tree secret that two local processes share by file path, never by value.

Flower's SuperLink and SuperNode hand tasks (and with them a task token for their Runtime API) to any
caller of ``AcquireTask`` on their local port unless both ends hold the same SuperExec auth secret
(``--superexec-auth-secret-file``: every ``AcquireTask`` is then HMAC-signed with it). FedShield creates
one such secret per SuperLink and per SuperNode: 32 random bytes in a file 0600, in a folder 0700 of
its own (``tempfile.mkdtemp``), owned by the user running the federation, and removed when that
process tree stops. Only its path appears on command lines.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECRET_BYTES = 32


@dataclass(frozen=True)
class LocalSecret:
    """A secret file (0600) alone in a private folder (0700)."""

    path: Path

    @classmethod
    def create(cls, purpose: str) -> LocalSecret:
        """A fresh secret; ``purpose`` names its folder (``superlink``, ``supernode``) for a reader of ``/tmp``."""
        folder = Path(tempfile.mkdtemp(prefix=f"fedshield-{purpose}-"))  # 0700, unpredictable name
        path = folder / "superexec-auth.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(SECRET_BYTES))
        return cls(path)

    def remove(self) -> None:
        """Delete the secret and its folder (nothing left when already gone)."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
