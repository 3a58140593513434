"""Long polls on the SuperLink: an empty pull is answered when there is something to pull, not at once.

Flower 1.41 and 1.42's sites and ServerApp learn of new messages only by polling. A SuperNode asks the Fleet API
for a message (FedShield's SuperNode every 0.05-0.25 s while idle, :mod:`fedshield.flower_ext.supernode`), and
the ServerApp asks the Runtime API for its replies (server/prompt_grid.py). Each empty poll is a request
that costs the SuperLink and the poller a few ms of CPU (a signed TLS request for a site). With 20
sites on a 2-core host those idle polls took most of the CPU of a round: 20 SuperNodes used 6.3 s of
CPU per plain round and 24 s per SecAgg+ round, whose four exchanges each wait for the slowest site
(docs/performance.md, transport security).

:class:`HeldPulls` holds a pull whose answer is empty (HTTP 200, no message) for up to ``hold_s``
seconds and answers it again as soon as the other side has pushed: a ServerApp push (Runtime
``push-messages``) re-runs the held Fleet pulls, a site's reply (Fleet ``push-messages``) the held
Runtime pulls. Each re-run passes through every layer inside this one (node authentication, task
tokens, Flower's handlers), so a held pull gets exactly the answer Flower would give at that moment;
one that nothing woke gets its empty answer back when the hold ends. Requests are matched on
``scope["path"]``, the path Flower's router dispatches on.

Object pulls are held the same way. A message's objects (its arrays, its records) are pushed one by
one after the message itself, so a site that pulls a message the moment it is pushed may ask for an
object that is announced but not yet uploaded; Flower answers "not available yet" and the puller
retries (from 20 ms, backing off, :mod:`fedshield.flower_ext.prompt_pulls`). Held, such a pull is answered when that
object's push arrives: a push wakes only the pulls waiting for its object id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flwr.proto.fleet_pb2 import PullMessagesResponse  # pylint: disable=E0611
from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse, PushObjectRequest  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesResponse  # pylint: disable=E0611

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]

HOLD_S = 2.0  # well under the 30 s read timeout of Flower's HTTP clients
ANY = ""  # wake key of message pushes: any push of messages may hold something for any puller


def _no_messages(answer: Any) -> bool:
    return len(answer.messages_list) == 0


def _not_uploaded_yet(answer: Any) -> bool:
    return bool(answer.object_found and not answer.object_available)


def _message_key(body: bytes) -> str:
    return ANY


def _pulled_object(body: bytes) -> str:
    request = PullObjectRequest()
    request.ParseFromString(body)
    return str(request.object_id)


def _pushed_object(body: bytes) -> str:
    request = PushObjectRequest()
    request.ParseFromString(body)
    return str(request.object_id)


@dataclass(frozen=True)
class Pull:
    """A pull path that may be held: the push that can satisfy it and how to tell it got nothing."""

    woken_by: str  # path of the push from the other side
    response_type: Any  # protobuf class of the pull's answer
    got_nothing: Callable[[Any], bool]  # on the parsed answer
    key: Callable[[bytes], str]  # request body -> what it waits for (ANY, or an object id)


#: pull path -> how it is held
PULLS: dict[str, Pull] = {
    "/v1/fleet/pull-messages": Pull("/v1/runtime/push-messages", PullMessagesResponse, _no_messages, _message_key),
    "/v1/runtime/pull-messages": Pull("/v1/fleet/push-messages", PullAppMessagesResponse, _no_messages,
                                      _message_key),
    "/v1/fleet/pull-object": Pull("/v1/runtime/push-object", PullObjectResponse, _not_uploaded_yet, _pulled_object),
    "/v1/runtime/pull-object": Pull("/v1/fleet/push-object", PullObjectResponse, _not_uploaded_yet, _pulled_object),
}
#: push path -> request body -> the key it wakes
PUSHES: dict[str, Callable[[bytes], str]] = {
    "/v1/runtime/push-messages": _message_key,
    "/v1/fleet/push-messages": _message_key,
    "/v1/runtime/push-object": _pushed_object,
    "/v1/fleet/push-object": _pushed_object,
}


@dataclass
class _Answer:
    """One buffered HTTP response of the inner app."""

    start: dict[str, Any] | None = None
    body: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        else:
            self.body.append(message)

    def got_nothing(self, pull: Pull) -> bool:
        """A 200 answer that parses as the pull's response type and has nothing in it yet."""
        if self.start is None or self.start.get("status") != 200:
            return False
        answer = pull.response_type()
        try:
            answer.ParseFromString(b"".join(m.get("body", b"") for m in self.body))
        except Exception:  # noqa: BLE001  # protobuf's DecodeError; anything unreadable is passed on as is
            return False
        return pull.got_nothing(answer)

    async def replay(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if self.start is not None:
            await send(self.start)
        for message in self.body:
            await send(message)


class _Signals:
    """Per wake key, one event shared by the requests waiting on it; forgotten when nobody waits."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], tuple[asyncio.Event, int]] = {}

    @contextlib.contextmanager
    def watching(self, key: tuple[str, str]) -> Iterator[asyncio.Event]:
        """The event a push for ``key`` sets from now on (watch *before* looking, so no push is missed)."""
        event, waiting = self._events.get(key, (None, 0))
        event = event or asyncio.Event()
        self._events[key] = (event, waiting + 1)
        try:
            yield event
        finally:
            current = self._events.get(key)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._events[key]
                else:
                    self._events[key] = (event, current[1] - 1)

    def fire(self, key: tuple[str, str]) -> None:
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].set()


class HeldPulls:
    """Pure ASGI middleware: pulls that got nothing wait up to ``hold_s`` for a matching push (module doc)."""

    def __init__(self, app: ASGIApp, hold_s: float = HOLD_S) -> None:
        self.app = app
        self.hold_s = hold_s
        self._signals = _Signals()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path in PUSHES and self.hold_s > 0:
            await self._push(scope, receive, send, path)
        elif path in PULLS and self.hold_s > 0:
            await self._held(scope, receive, send, PULLS[path])
        else:
            await self.app(scope, receive, send)

    async def _push(self, scope: Scope, receive: Any, send: Any, path: str) -> None:
        chunks: list[bytes] = []

        async def teed() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        try:
            await self.app(scope, teed, send)
        finally:
            try:
                self._signals.fire((path, PUSHES[path](b"".join(chunks))))
            except Exception:  # noqa: BLE001  # not a valid push: Flower refused it, nothing to wake
                pass

    async def _held(self, scope: Scope, receive: Any, send: Any, pull: Pull) -> None:
        body = await _request_body(receive)
        try:
            key = (pull.woken_by, pull.key(body))
        except Exception:  # noqa: BLE001  # unreadable request: Flower answers it (an error), never held
            await self.app(scope, _replay(body, receive), send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_s
        while True:
            with self._signals.watching(key) as pushed:
                answer = _Answer()
                # a fresh copy per run: the inner layers keep per-request state in the scope
                await self.app({**scope, "state": dict(scope.get("state") or {})}, _replay(body, receive),
                               answer.send)
                left = deadline - loop.time()
                if left <= 0 or not answer.got_nothing(pull):
                    break
                if not pushed.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(pushed.wait(), left)
                if not pushed.is_set():
                    break  # nothing pushed during the hold: the empty answer still holds
        await answer.replay(send)


async def _request_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away before its body arrived
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``receive`` for one run of the inner app: the buffered body, then the real channel (disconnects)."""
    delivered = False

    async def replayed() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
