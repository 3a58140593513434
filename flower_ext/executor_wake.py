"""A wake-up channel from a site's SuperNode to its warm executor: no idle polling between them.

Flower's executor finds work by polling the SuperNode's Runtime API (``AcquireTask``). Polled fast, a
message is picked up at once but every idle site keeps its SuperNode busy answering (20 sites on one
2-core host: 0.13 cores for the executors alone, plus the SuperNodes' share of answering them); polled
slowly, each message of a round waits. ``fl-client join`` instead gives the two processes the ends of
one local datagram socket pair: the SuperNode sends one byte when it has stored a message for the
executor (``notify``), and the executor sleeps until that byte or its (long) fallback poll interval,
whichever comes first (``wait``). The byte carries nothing; the executor still takes the task from
Flower's Runtime API as before, so a lost or spurious byte only costs or saves one poll.

The descriptor numbers travel in ``$FEDSHIELD_WAKE_FD`` (SuperNode) and ``--wake-fd`` (executor).
"""

from __future__ import annotations

import os
import select
import socket
import time

WAKE_FD_ENV = "FEDSHIELD_WAKE_FD"


def wake_pair() -> tuple[socket.socket, socket.socket]:
    """``(notify_end, wait_end)``: a connected pair of local datagram sockets (hand each to its child
    with ``subprocess.Popen(pass_fds=...)`` and close both in the parent)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


class WakeNotifier:
    """The SuperNode's end: :meth:`notify` never blocks and never raises (the executor may be gone)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    def from_env(cls) -> WakeNotifier | None:
        fd = os.environ.get(WAKE_FD_ENV)
        if not fd:
            return None
        try:
            return cls(socket.socket(fileno=int(fd)))
        except (OSError, ValueError):  # not a socket: started by hand, without the executor's pair
            return None

    def notify(self) -> None:
        try:
            self.sock.send(b"\x01")
        except OSError:  # buffer full (the executor is already due to wake) or the executor is gone
            pass


class WakeWaiter:
    """The executor's end: :meth:`wait` returns when woken or after ``timeout`` seconds."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False  # the SuperNode's end is gone: plain sleeps from then on

    @classmethod
    def from_fd(cls, fd: int) -> WakeWaiter:
        return cls(socket.socket(fileno=fd))

    def wait(self, timeout: float) -> bool:
        """True when a wake-up byte arrived (all pending ones are consumed), False after ``timeout`` s."""
        if self.closed:
            time.sleep(timeout)
            return False
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return False
        woken = False
        while True:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                return woken
            except OSError:
                data = b""
            if not data:  # the peer closed its end (where that reads as empty): stop selecting on it
                self.closed = True
                return woken
            woken = True
