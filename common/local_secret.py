"""A per-process-tree secret that two local processes share by file path, never by value.

Flower's SuperLink and SuperNode hand tasks (and with them a task token for their Runtime API) to any
caller of ``AcquireTask`` on their local port unless both ends hold the same SuperExec auth secret
(``--superexec-auth-secret-file``: every ``AcquireTask`` is then HMAC-signed with it). FedShield creates
one such secret per SuperLink and per SuperNode: 32 random bytes in a file 0600, in a folder 0700 of
its own (``tempfile.mkdtemp``), owned by the user running the federation, and removed when that
process tree stops. Only its path appears on command lines.

A process killed with SIGKILL cannot remove its folder, so the folder's name carries the creating
process's id, and each new secret first removes the folders of its kind whose creator is gone (the
full test suite left 23 of them behind in ``/tmp`` before).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECRET_BYTES = 32
SECRET_FILE = "superexec-auth.secret"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphans(purpose: str, root: Path | None = None) -> list[Path]:
    """Remove this user's secret folders of ``purpose`` whose creating process is gone; the folders removed."""
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(rf"fedshield-{re.escape(purpose)}-(\d+)-")
    removed = []
    for folder in root.glob(f"fedshield-{purpose}-*"):
        match = pattern.match(folder.name)
        try:
            mine = folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid()
            only_secret = mine and {p.name for p in folder.iterdir()} <= {SECRET_FILE}
        except OSError:
            continue
        if match and only_secret and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass(frozen=True)
class LocalSecret:
    """A secret file (0600) alone in a private folder (0700)."""

    path: Path

    @classmethod
    def create(cls, purpose: str) -> LocalSecret:
        """A fresh secret; ``purpose`` names its folder (``superlink``, ``supernode``) for a reader of ``/tmp``."""
        remove_orphans(purpose)
        folder = Path(tempfile.mkdtemp(prefix=f"fedshield-{purpose}-{os.getpid()}-"))  # 0700, unpredictable name
        path = folder / SECRET_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(SECRET_BYTES))
        return cls(path)

    def remove(self) -> None:
        """Delete the secret and its folder (nothing left when already gone)."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
