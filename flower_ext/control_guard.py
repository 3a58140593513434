"""Only the coordinator starts runs: a guard in front of the SuperLink's Control and Runtime APIs.

Flower 1.41 and 1.42's open-source SuperLink serves its Fleet API (sites), Control API (``flwr run``/``ls``/
``supernode register``) and Runtime API (the ServerApp) on ONE HTTP port, and its Control API's account
authentication is an Enterprise feature (the OSS build plugs in a no-op). Anyone who can reach the port a
site connects to could therefore submit a run that executes on every SuperNode. FedShield starts
Flower's own ``flower-superlink`` with one more ASGI middleware, :class:`CoordinatorOnly`, in front of its layers:

* ``/health``: passed through;
* ``/v1/fleet/*``: passed through (sites; SuperNode authentication is Flower's) once the coordinator has
  registered the enrolled sites' keys (it creates the file named by ``FEDSHIELD_FLEET_READY_FILE``);
  before that, HTTP 503, which Flower's SuperNode retries, so a site that connects early is not
  refused as unknown;
* ``/v1/control/*``: only with ``Authorization: Bearer <token>``, the secret in the federation's
  ``server/control.token`` (0600) that only the coordinator's own Flower CLI presents
  (:mod:`fedshield.flower_ext.flower_cli`); compared in constant time;
* ``/v1/runtime/*``: only from this host (loopback, or the address the SuperLink listens on, which the
  ServerApp beside it dials) and, Flower's own check, with a task token;
* anything else (API docs, other routers): 404.

A refused request gets HTTP 403, one line in the SuperLink log naming the peer and the path, and an entry
in the federation's audit log (:mod:`fedshield.flower_ext.audit_refusals`; rate-limited).
:func:`fedshield.flower_ext.superlink.install` puts this middleware in front of Flower's layers and
checks, before the port opens, that the app Flower built refuses a stranger
(:func:`refuses_strangers`); the launcher asks the running SuperLink once more over the network
(:func:`probe_served`). Without the token variable (``--insecure`` development runs) no guard is
installed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fedshield.common.errors import ConfigError
from fedshield.flower_ext import audit_refusals
from fedshield.flower_ext.scoped_middleware import Scope

TOKEN_ENV = "FEDSHIELD_CONTROL_TOKEN_FILE"
READY_ENV = "FEDSHIELD_FLEET_READY_FILE"
LISTEN_HOST_ENV = "FEDSHIELD_LISTEN_HOST"  # the SuperLink's --host: the ServerApp's requests come from it
NOT_READY = "the coordinator is still registering its sites; retry shortly"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
START_RUN = "/v1/control/start-run"  # `flwr run`: a refusal of it is a run refused in the audit log
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]
SELF_CHECK = "fedshield.self_check"  # scope key of the start-up self-check's requests (no log line)
REFUSAL_PREFIX = b'{"detail": "FedShield: '
# Two requests the guard must refuse, whatever else the SuperLink serves: (path, peer)
STRANGERS = (("/v1/control/list-runs", "127.0.0.1"),  # the Control API without the token, even from loopback
             ("/v1/runtime/get-nodes", "192.0.2.1"))  # the Runtime API from another host (TEST-NET-1)


def from_this_host(peer: str | None, listen_host: str | None = None) -> bool:
    """Whether ``peer`` is this host: a loopback address (all of 127.0.0.0/8), or the specific address the
    SuperLink listens on, which the ServerApp beside it dials and so connects from."""
    if peer is None:
        return False
    if peer in LOOPBACK or (listen_host not in (None, "", "0.0.0.0", "::") and peer == listen_host):
        return True
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def decide(path: str, peer: str | None, authorization: str | None, token: str, fleet_ready: bool = True,
           listen_host: str | None = None) -> str | None:
    """None when the request may pass, else the refusal reason (``listen_host``: the SuperLink's ``--host``)."""
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
        if from_this_host(peer, listen_host):
            return None
        return "Runtime API is served to the coordinator's own processes only"
    return "not served"


class CoordinatorOnly:
    """Pure ASGI middleware (keeps Flower's streaming responses intact)."""

    def __init__(self, app: ASGIApp, token: str, ready_file: str | None = None, listen_host: str | None = None) -> None:
        self.app = app
        self.token = token
        self.ready_file = ready_file
        self.listen_host = listen_host
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
        reason = decide(scope.get("path", ""), peer, headers.get("authorization"), self.token, self.fleet_ready(),
                        self.listen_host)
        if reason is None:
            await self.app(scope, receive, send)
            return
        status = {"not served": 404, NOT_READY: 503}.get(reason, 403)
        if status != 503 and not scope.get(SELF_CHECK):
            print(f"FedShield guard: refused {scope.get('method')} {scope.get('path')} from {peer}: {reason}",
                  file=sys.stderr, flush=True)
            path = str(scope.get("path", ""))[:200]
            audit_refusals.record("run refused" if path == START_RUN else "request refused", str(peer),
                                  peer=str(peer), method=str(scope.get("method")), path=path, reason=reason)
        body = json.dumps({"detail": f"FedShield: {reason}"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def read_token(path: str) -> str:
    """The coordinator token in ``path`` (``server/control.token`` of the federation)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the control token ({exc.strerror}); re-create the federation "
                          "with fl-server init") from None
    if len(token) < 32:
        raise ConfigError(f"{path}: token too short; re-create the federation with fl-server init")
    return token


def refuses_strangers(app: ASGIApp) -> str | None:
    """None when ``app`` (the SuperLink's app as Flower built it, before it serves) refuses each of
    :data:`STRANGERS` with this guard's 403, else what happened instead. In process, no port."""

    async def ask(path: str, peer: str) -> tuple[int, bytes]:
        answer: dict[str, Any] = {"status": 0, "body": b""}
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/protobuf")], "client": (peer, 1),
                 "server": ("fedshield-self-check", 0), "state": {}, SELF_CHECK: True}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await app(scope, receive, send)
        return answer["status"], answer["body"]

    for path, peer in STRANGERS:
        try:
            status, body = asyncio.run(ask(path, peer))
        except Exception as exc:  # noqa: BLE001  # it reached Flower's handlers, which failed: not refused
            return f"POST {path} from {peer} reached Flower ({type(exc).__name__})"
        if status != 403 or not body.startswith(REFUSAL_PREFIX):
            return f"POST {path} from {peer} was answered {status}, not refused by the guard"
    return None


def probe_served(base_url: str, context: ssl.SSLContext | None, timeout: float = 5.0) -> str | None:
    """None when the SuperLink serving ``base_url`` refuses a Control request without the token with this
    guard's 403, else what it answered: the check, from outside, that the guard is in the served app."""
    request = urllib.request.Request(f"{base_url}{STRANGERS[0][0]}", data=b"", method="POST",
                                     headers={"content-type": "application/protobuf"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return f"an unauthenticated Control request was answered {response.status}"
    except urllib.error.HTTPError as exc:
        if exc.code == 403 and exc.read().startswith(REFUSAL_PREFIX):
            return None
        return f"an unauthenticated Control request was answered {exc.code}, not refused by the guard"
    except (urllib.error.URLError, OSError) as exc:
        return f"the Control API did not answer ({exc})"


