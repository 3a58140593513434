"""Only the coordinator starts runs: a guard in front of the SuperLink's Control and Runtime APIs.

Flower 1.41's open-source SuperLink serves its Fleet API (sites), Control API (``flwr run``/``ls``/
``supernode register``) and Runtime API (the ServerApp) on ONE HTTP port, and its Control API's account
authentication is an Enterprise feature (the OSS build plugs in a no-op). Anyone who can reach the port a
site connects to could therefore submit a run that executes on every SuperNode. FedShield starts
Flower's own ``flower-superlink`` through this entry point, which adds one ASGI middleware (the hook
Flower's app factory offers extensions, ``flwr.superlink.main._get_middleware``):

* ``/health``: passed through;
* ``/v1/fleet/*``: passed through (sites; SuperNode authentication is Flower's) once the coordinator has
  registered the enrolled sites' keys (it creates the file named by ``FEDSHIELD_FLEET_READY_FILE``);
  before that, HTTP 503, which Flower's SuperNode retries, so a site that connects early is not
  refused as unknown;
* ``/v1/control/*``: only with ``Authorization: Bearer <token>``, the secret in the federation's
  ``server/control.token`` (0600) that only the coordinator's own Flower CLI presents
  (:mod:`fedshield.server.coordinator_flwr`); compared in constant time;
* ``/v1/runtime/*``: only from loopback (the ServerApp runs beside the SuperLink) and, Flower's own
  check, with a task token;
* anything else (API docs, other routers): 404.

A refused request gets HTTP 403 and one line in the SuperLink log naming the peer and the path.
Run as ``FEDSHIELD_CONTROL_TOKEN_FILE=... python -m fedshield.server.control_guard <flower-superlink args>``.
Without the token variable (``--insecure`` development runs) no guard is installed. Either way
Flower's own layers are scoped to the requests they act on (:mod:`fedshield.common.scoped_middleware`),
empty message pulls are held until there is something to pull (:mod:`fedshield.server.held_pulls`),
the ServerApp gets two minutes to start (:mod:`fedshield.server.task_start_window`), and the SuperLink
ends when ``fl-server start`` is gone (:func:`fedshield.common.flower_env.exit_with_parent_from_env`).
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from typing import Any, Awaitable, Callable

from fedshield.common.flower_env import exit_with_parent_from_env, silence_flower
from fedshield.common.scoped_middleware import Scope

TOKEN_ENV = "FEDSHIELD_CONTROL_TOKEN_FILE"
READY_ENV = "FEDSHIELD_FLEET_READY_FILE"
NOT_READY = "the coordinator is still registering its sites; retry shortly"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def decide(path: str, peer: str | None, authorization: str | None, token: str, fleet_ready: bool = True) -> str | None:
    """None when the request may pass, else the refusal reason."""
    if path == "/health":
        return None
    if path.startswith("/v1/fleet/"):
        return None if fleet_ready else NOT_READY
    if path.startswith("/v1/control/"):
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if presented and hmac.compare_digest(presented.encode(), token.encode()):
            return None
        return "Control API needs the coordinator's token; only the coordinator starts runs"
    if path.startswith("/v1/runtime/"):
        if peer in LOOPBACK:
            return None
        return "Runtime API is served to the coordinator's own processes only"
    return "not served"


class CoordinatorOnly:
    """Pure ASGI middleware (keeps Flower's streaming responses intact)."""

    def __init__(self, app: ASGIApp, token: str, ready_file: str | None = None) -> None:
        self.app = app
        self.token = token
        self.ready_file = ready_file
        self._ready = ready_file is None

    def fleet_ready(self) -> bool:
        if not self._ready and self.ready_file is not None and os.path.exists(self.ready_file):
            self._ready = True  # once ready, stays ready
        return self._ready

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        peer = (scope.get("client") or (None, None))[0]
        reason = decide(scope.get("path", ""), peer, headers.get("authorization"), self.token, self.fleet_ready())
        if reason is None:
            await self.app(scope, receive, send)
            return
        status = {"not served": 404, NOT_READY: 503}.get(reason, 403)
        if status != 503:
            print(f"FedShield guard: refused {scope.get('method')} {scope.get('path')} from {peer}: {reason}",
                  file=sys.stderr, flush=True)
        body = json.dumps({"detail": f"FedShield: {reason}"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def read_token(path: str) -> str:
    token = open(path, encoding="utf-8").read().strip()
    if len(token) < 32:
        raise SystemExit(f"{path}: token too short; re-create the federation with fl-server init")
    return token


def install(token: str | None, ready_file: str | None = None, hold_s: float = 0.0) -> None:
    """Build the SuperLink's middleware as Flower does, each of Flower's layers scoped to the requests it
    acts on (:mod:`fedshield.common.scoped_middleware`); with a ``token``, :class:`CoordinatorOnly`
    outermost; with ``hold_s`` > 0, long polls (:class:`~fedshield.server.held_pulls.HeldPulls`) inside
    the guard, so a refused request is never held and every held answer passes Flower's own checks."""
    from starlette.middleware import Middleware

    import flwr.superlink.main as superlink_main

    from fedshield.common.scoped_middleware import scoped
    from fedshield.server.held_pulls import HeldPulls

    flower_middleware = superlink_main._get_middleware  # pylint: disable=protected-access

    def with_guard() -> list[Middleware]:
        guard = [] if token is None else [Middleware(CoordinatorOnly, token=token, ready_file=ready_file)]
        held = [Middleware(HeldPulls, hold_s=hold_s)] if hold_s > 0 else []
        return [*guard, *held, *scoped(flower_middleware())]

    superlink_main._get_middleware = with_guard  # type: ignore[attr-defined]


def superlink_app(scope_layers: bool = True):  # type: ignore[no-untyped-def]
    """Flower's SuperLink FastAPI app, in this process, with its layers scoped as :func:`main` runs it
    (no guard) or, ``scope_layers=False``, exactly as Flower builds it: for in-process comparisons."""
    import warnings

    import flwr.superlink.main as superlink_main

    original = superlink_main._get_middleware  # pylint: disable=protected-access
    try:
        if scope_layers:
            install(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return superlink_main.create_app()
    finally:
        superlink_main._get_middleware = original  # type: ignore[attr-defined]


def main() -> None:
    silence_flower()
    token_file = os.environ.get(TOKEN_ENV)
    from fedshield.server.held_pulls import HOLD_S

    install(read_token(token_file) if token_file else None, os.environ.get(READY_ENV) or None, hold_s=HOLD_S)
    from fedshield.server import task_start_window

    task_start_window.install()  # a ServerApp on a busy host gets 2 minutes to start, not 30 s
    exit_with_parent_from_env()
    from flwr.superlink.cli import flower_superlink

    flower_superlink()


if __name__ == "__main__":
    main()
