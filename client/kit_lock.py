"""One ``fl-client join`` per site kit on a host: an exclusive OS lock on the kit's key while the site runs.

Why: Flower's SuperLink refuses a key whose node is online already, and it cannot say whether that
node is a live second process or one that was killed and whose connection it still holds (until its
heartbeats have been missed: about a minute with Flower 1.42's 30 s interval and patience 2). A site
restarted after a crash (a power loss, ``systemd`` restarting it, a replaced container) must wait that
minute out and then join; a second ``fl-client join`` with the same kit must be refused at once.

The lock tells the two apart on this host: ``fcntl.flock`` on the kit's ``node.key``, opened read-only
(kits may be mounted read-only), held for the whole join. The kernel drops it when its holder exits,
``kill -9`` included, so while this process holds it, a refusal by the SuperLink can only be a dead
process's connection (or another host using this kit, which the wait then reports after its timeout).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedshield.common.errors import FedShieldError


def already_connected_error(site: str) -> FedShieldError:
    """The error of a join whose kit another live process uses (here, or on another host)."""
    return FedShieldError(f"this site's kit ({site}) is already connected to the coordinator from another process "
                          "(another fl-client join with this kit, here or on another host); stop that one first")


@contextmanager
def kit_lock(node_key: Path, site: str) -> Iterator[None]:
    """Hold the kit's lock for the ``with`` block; raise :func:`already_connected_error` if a live process has it."""
    fd = os.open(node_key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise already_connected_error(site) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
