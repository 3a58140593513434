"""Refuse an oversized request body before reading it, and a body that stops arriving.

Flower's SuperLink reads a request's whole body into memory (its protobuf translation layer) before it
authenticates a site, so a stranger's 100 MB POST was read, and the memory was never given back.
:class:`BodyLimit`, outermost in the SuperLink's app (:mod:`fedshield.flower_ext.superlink`), answers HTTP
413 with ``Connection: close`` when the declared ``Content-Length`` is over the cap, before one byte of the
body is read; a body sent without a length (chunked) is counted as it arrives and refused the same way
once it passes the cap. A body that stalls (no part for ``gap_s`` seconds) is answered 408. Either way
one line goes to the SuperLink log, and what Flower's layers answer after that is dropped.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from fedshield.flower_ext.scoped_middleware import Scope

TOO_LARGE, STALLED = 413, 408


class _Refused(Exception):
    """Raised from the app's ``receive`` after the refusal was sent, to end Flower's handling."""


class BodyLimit:
    """Pure ASGI middleware: ``max_bytes`` per request body, ``gap_s`` between two parts of one."""

    def __init__(self, app: Any, max_bytes: int, gap_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.gap_s = gap_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, TOO_LARGE, f"declares a {declared:,}-byte body")
            return
        received = 0
        complete = False
        answered = False  # this layer sent the refusal
        started = False  # Flower began an answer

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, complete, answered
            if complete:  # the body is in: what follows is Starlette waiting for a disconnect, untimed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.gap_s)
            except TimeoutError:
                answered = await self._refuse(scope, send, STALLED, f"sent no body for {self.gap_s:g} s",
                                              started=started)
                raise _Refused from None
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    answered = await self._refuse(scope, send, TOO_LARGE, f"sent over {self.max_bytes:,} bytes",
                                                  started=started)
                    raise _Refused
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if answered:
                return  # Flower's answer to a request this layer already refused
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        except Exception:
            if not answered:
                raise  # Flower's error, not ours

    async def _refuse(self, scope: Scope, send: Any, status: int, why: str, *, started: bool = False) -> bool:
        """Answer ``status`` (unless Flower already began an answer) and log the refusal; True once sent."""
        peer = (scope.get("client") or (None, None))[0]
        limit = f"the limit is {self.max_bytes:,} bytes" if status == TOO_LARGE else "the body must keep coming"
        print(f"FedShield limits: refused {scope.get('method')} {scope.get('path')} from {peer}: {why}; {limit}",
              file=sys.stderr, flush=True)
        if started:
            return True
        body = json.dumps({"detail": f"FedShield: request body refused: {why}; {limit}"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        return True


def _content_length(scope: Scope) -> int | None:
    """The declared body length; a malformed one counts as unbounded (uvicorn refuses it first anyway)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return sys.maxsize
    return None
