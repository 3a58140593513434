"""The dashboard's web app (Starlette, which Flower already brings): the page, its API and the login form.

Routes: ``/`` the page, ``/static/*`` its scripts and styles (shipped in the package, nothing from elsewhere),
``/api/state`` the run's state as JSON (:func:`~fedshield.server.dashboard.run_view.dashboard_state`), which
the page polls every second, and ``/login`` (pages bound beyond loopback only). Every response forbids
framing and scripts from anywhere but the page itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fedshield.common.atomic_io import read_json
from fedshield.common.errors import FedShieldError
from fedshield.common.run_files import RESULTS_FILE
from fedshield.server.dashboard.access import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    AccessGate,
    ASGIApp,
    Receive,
    Scope,
    Send,
    Sessions,
    token_matches,
)
from fedshield.server.dashboard.run_view import dashboard_state

STATIC = Path(__file__).parent / "static"
POLL_SECONDS = 1.0
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                  b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
MAX_LOGIN_BYTES = 4096


@dataclass(frozen=True)
class RunSource:
    """Where the dashboard reads from: a run folder and, for site enrolment and revocation, a federation."""

    run_dir: Path
    federation_dir: Path | None = None

    def state(self) -> dict[str, Any]:
        try:
            doc = read_json(self.run_dir / RESULTS_FILE)
        except (OSError, ValueError):
            doc = None  # not written yet (the run is starting); results.json is replaced atomically
        return dashboard_state(doc if isinstance(doc, dict) else None, self.federation_sites())

    def federation_sites(self) -> dict[str, str] | None:
        if self.federation_dir is None:
            return None
        from fedshield.server.federation import Federation

        try:  # re-read each time: `fl-server revoke-site` shows at once
            fed = Federation.load(self.federation_dir)
        except FedShieldError:
            return None
        return {name: str(entry.get("status", "")) for name, entry in fed.sites.items()}


def build_app(source: RunSource, *, bound_host: str, token: str | None, secure_cookie: bool) -> ASGIApp:
    """The dashboard app for ``source``, behind its :class:`AccessGate` and security headers."""
    sessions = Sessions()

    async def page(_: Request) -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"cache-control": "no-store"})

    async def state(_: Request) -> Response:
        return JSONResponse({**source.state(), "poll_seconds": POLL_SECONDS}, headers={"cache-control": "no-store"})

    async def login_form(_: Request) -> Response:
        return _login_page(200, "")

    async def login(request: Request) -> Response:
        body = await request.body()
        given = parse_qs(body[:MAX_LOGIN_BYTES].decode("utf-8", "replace")).get("token", [""])[0]
        if not token_matches(given.strip(), token):
            return _login_page(401, "That is not this dashboard's token.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, sessions.open(), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=secure_cookie, path="/")
        return response

    routes = [Route("/", page), Route("/api/state", state), Mount("/static", StaticFiles(directory=STATIC))]
    if token is not None:
        routes += [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"])]
    app = Starlette(routes=routes)
    return _with_security_headers(AccessGate(app, bound_host=bound_host, token=token, sessions=sessions))


def _login_page(status: int, message: str) -> Response:
    html = (STATIC / "login.html").read_text(encoding="utf-8").replace("{{message}}", message)
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _with_security_headers(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped
