"""One process at a time on a site's privacy ledger: an exclusive OS lock held from plan to release.

Why a lock and not atomic writes alone: a round reads the ledger, trains for seconds to minutes, then
writes it back. Two federations training on one data folder at once (two ``fl-client join`` on the
same data) each wrote back the list it had read before training, so one lost the other's rounds (7 of
18 rounds over 3 trials), and each planned its noise as if the other did not exist. Holding the lock
across plan → train → release serialises the rounds of every process on one data folder, and each
plans against everything the others recorded.

The lock is ``fcntl.flock`` on ``privacy-ledger.lock`` beside the ledger: the kernel releases it when
its holder exits, however it exits (``kill -9`` included), so a dead process never blocks the site.
The holder's pid is written into the file only to name it in the waiting message.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedshield.common.errors import ConfigError

LOCK_FILE = "privacy-ledger.lock"
#: how long a round waits for another process's round on the same data before giving up (seconds)
DEFAULT_WAIT_S = 3600.0
_POLL_S = 0.05

log = logging.getLogger(__name__)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text or "?"


@contextmanager
def ledger_lock(state_dir: Path, *, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the site's ledger lock for the ``with`` block; wait up to ``wait_s`` seconds for it.

    Re-entrant within one process only in the sense that nested use would deadlock: take it once per
    message, around everything that reads the ledger, trains and writes it.
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.warning("waiting for the privacy ledger in %s: process %s is training on this data "
                                "(another federation); rounds on one data folder run one at a time", state, _holder(fd))
                    told = True
                if time.monotonic() > deadline:
                    raise ConfigError(f"{state / LOCK_FILE}: process {_holder(fd)} held this site's privacy ledger "
                                      f"for over {wait_s:.0f} s; wait for its round to end or stop it") from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
