"""The dashboard served by uvicorn (which Flower already brings) in a thread of the calling process.

``fl-server start --dashboard`` runs it beside the run it follows, ``fl-server dashboard`` on its own. The
socket is bound here first, so a taken port is a one-line error naming the flag, not a log line of uvicorn's.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from fedshield.common import net
from fedshield.common.errors import ConfigError
from fedshield.server.dashboard.address import is_loopback
from fedshield.server.dashboard.app import RunSource, build_app

START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class TlsPair:
    """The certificate (PEM, with the names browsers reach the page by) and its private key."""

    cert: Path
    key: Path


class DashboardServer:
    """Serve :func:`~fedshield.server.dashboard.app.build_app` on ``host:port`` until :meth:`stop`.

    A host beyond loopback needs ``token`` (the page refuses requests without it) and ``tls`` (so the token
    and the session cookie never cross the network in clear).
    """

    def __init__(self, source: RunSource, *, host: str, port: int, token: str | None, tls: TlsPair | None,
                 flag: str) -> None:
        if not is_loopback(host) and (token is None or tls is None):
            raise ConfigError(f"{flag} {net.join_address(host, port)}: a dashboard beyond loopback needs the "
                              "federation's token and certificate; pass --dir FEDERATION, or bind it to 127.0.0.1")
        self.host, self.port, self.tls = host, port, tls
        app = build_app(source, bound_host=host, token=token if not is_loopback(host) else None,
                        secure_cookie=tls is not None)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None)
        self._server = uvicorn.Server(config)
        self._socket = _bind(host, port, flag)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        """The page's address (an every-interface bind is named by this host's loopback address)."""
        return f"{'https' if self.tls else 'http'}://{net.join_address(net.dial_host(self.host), self.port)}/"

    def start(self) -> DashboardServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise ConfigError(f"the dashboard on {self.url} did not start (certificate or key unreadable?)")
            time.sleep(0.05)
        return self

    def wait(self) -> None:
        """Serve until the process is interrupted (Ctrl-C raises ``KeyboardInterrupt`` here)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()


def _bind(host: str, port: int, flag: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{flag} {net.join_address(host, port)}: cannot listen there ({exc.strerror}); pick "
                          "another port or address") from None
    sock.listen(64)
    sock.set_inheritable(False)
    return sock
