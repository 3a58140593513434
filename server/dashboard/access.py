"""Who may read the dashboard: anyone on this host for a loopback page, token holders for any other.

A page bound to loopback (:func:`~fedshield.server.dashboard.address.is_loopback`) answers requests whose
``Host`` names loopback (a DNS-rebinding page elsewhere gets HTTP 403). A page bound beyond loopback answers
only a request that carries the federation's read-only dashboard token (``server/dashboard.token``, 0600):
as ``Authorization: Bearer TOKEN``, or once through the login form, which sets an HttpOnly session cookie. The
token never appears in a URL, and is compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_text
from fedshield.common.errors import ConfigError
from fedshield.server.dashboard.address import is_loopback

SESSION_COOKIE = "fedshield_dashboard"
SESSION_SECONDS = 12 * 3600
#: paths answered without a token: the login form and the package's own (public) scripts and styles
OPEN_PATHS = ("/login", "/static/")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def ensure_token(path: Path) -> bool:
    """Create the dashboard token file (0600) unless it exists; whether it was created now."""
    if path.exists():
        return False
    atomic_write_text(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
    return True


def read_token(path: Path) -> str:
    """The token in ``path``; a missing, empty or group/world-readable file is a one-line ``ConfigError``."""
    try:
        mode = path.stat().st_mode & 0o077
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the dashboard token ({exc.strerror})") from None
    if mode:
        raise ConfigError(f"{path}: readable by other users; chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError(f"{path}: holds no token; delete it and start again to write a new one")
    return token


def token_matches(given: str, token: str | None) -> bool:
    """Whether ``given`` is ``token`` (compared in constant time); never with no token."""
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def _host_name(host_header: str) -> str:
    """The host of a ``Host`` header: ``127.0.0.1:8050`` -> 127.0.0.1, ``[::1]:8050`` -> ::1."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Sessions:
    """Random session ids handed out by the login form, each valid for :data:`SESSION_SECONDS`."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def open(self) -> str:
        now = time.monotonic()
        self._expiry = {sid: t for sid, t in self._expiry.items() if t > now}
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = now + SESSION_SECONDS
        return sid

    def valid(self, sid: str) -> bool:
        return any(hmac.compare_digest(sid, known) and t > time.monotonic() for known, t in self._expiry.items())


class AccessGate:
    """ASGI middleware in front of the dashboard app: the rules in the module docstring.

    ``token`` None: the page is bound to loopback (``bound_host``) and needs none; a page bound beyond
    loopback must be given one.
    """

    def __init__(self, app: ASGIApp, *, bound_host: str, token: str | None, sessions: Sessions) -> None:
        if token is None and not is_loopback(bound_host):
            raise ConfigError(f"dashboard on {bound_host}: a page beyond loopback needs a token")
        self.app, self.token, self.sessions = app, token, sessions

    def authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and token_matches(auth[7:].strip(), self.token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            return False
        morsel = cookie.get(SESSION_COOKIE)
        return morsel is not None and self.sessions.valid(morsel.value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = str(scope.get("path", ""))
        if self.token is None:
            if not is_loopback(_host_name(headers.get("host", ""))):
                await _plain(send, 403, "this dashboard answers only on loopback addresses")
                return
        elif not path.startswith(OPEN_PATHS) and not self.authorized(headers):
            if path.startswith("/api/"):
                await _plain(send, 401, "dashboard token required (Authorization: Bearer, or log in at /login)")
            else:
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/login"), (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": text.encode() + b"\n"})
