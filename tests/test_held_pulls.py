"""Long polls on the SuperLink (flower_ext/held_pulls.py): held while there is nothing, answered on the push."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse  # pylint: disable=E0611
from flwr.proto.message_pb2 import (  # pylint: disable=E0611
    Message as ProtoMessage,
)
from flwr.proto.message_pb2 import (
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
)
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

from fedshield.flower_ext import superlink
from fedshield.flower_ext.control_guard import CoordinatorOnly
from fedshield.flower_ext.held_pulls import HeldPulls

HOLD = 1.0


class FakeLink:
    """The four Flower routes HeldPulls watches, over a dict: node -> queued messages, id -> object bytes."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.queued: dict[int, list[ProtoMessage]] = {}
        self.objects: dict[str, bytes] = {}  # b"" = announced, not uploaded yet
        self.runs: dict[str, int] = {}
        self.on_pull: Any = None  # called inside the first pull's handler (a push racing the pull)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        self.runs[path] = self.runs.get(path, 0) + 1
        answer = b""
        if path == "/v1/fleet/pull-messages":
            node = PullMessagesRequest.FromString(body).node.node_id
            answer = PullMessagesResponse(messages_list=self.queued.pop(node, [])).SerializeToString()
            if self.on_pull is not None:  # after looking, before answering
                hook, self.on_pull = self.on_pull, None
                await hook()
        elif path == "/v1/fleet/pull-object":
            content = self.objects.get(PullObjectRequest.FromString(body).object_id)
            answer = PullObjectResponse(object_found=content is not None, object_available=bool(content),
                                        object_content=content or b"").SerializeToString()
        elif path == "/v1/runtime/push-messages":
            self.queued.setdefault(int(body.decode()), []).append(ProtoMessage())
        elif path == "/v1/runtime/push-object":
            pushed = PushObjectRequest.FromString(body)
            self.objects[pushed.object_id] = pushed.object_content
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/protobuf")]})
        await send({"type": "http.response.body", "body": answer})


def _pull(node: int) -> tuple[str, bytes]:
    return "/v1/fleet/pull-messages", PullMessagesRequest(node=Node(node_id=node)).SerializeToString()


def _pull_object(object_id: str) -> tuple[str, bytes]:
    return "/v1/fleet/pull-object", PullObjectRequest(object_id=object_id).SerializeToString()


def _push_object(object_id: str) -> tuple[str, bytes]:
    request = PushObjectRequest(object_id=object_id, object_content=b"arrays")
    return "/v1/runtime/push-object", request.SerializeToString()


async def _post(client: httpx.AsyncClient, request: tuple[str, bytes],
                delay: float = 0.0) -> tuple[float, httpx.Response]:
    await asyncio.sleep(delay)
    start = time.monotonic()
    response = await client.post(request[0], content=request[1])
    return time.monotonic() - start, response


def _exchange(link: Any, *requests: tuple[tuple[str, bytes], float]) -> list[tuple[float, httpx.Response]]:
    """Send each (request, delay) concurrently through HeldPulls around ``link`` (an ASGI app); (seconds,
    response) each."""
    async def go() -> list[tuple[float, httpx.Response]]:
        transport = httpx.ASGITransport(app=HeldPulls(link, hold_s=HOLD))
        async with httpx.AsyncClient(transport=transport, base_url="http://superlink") as client:
            return list(await asyncio.gather(*(_post(client, r, d) for r, d in requests)))

    return asyncio.run(go())


def test_an_empty_pull_is_held_for_the_hold_then_answered_empty() -> None:
    link = FakeLink()
    [(seconds, response)] = _exchange(link, (_pull(7), 0.0))
    assert response.status_code == 200
    assert list(PullMessagesResponse.FromString(response.content).messages_list) == []
    assert HOLD - 0.05 <= seconds < HOLD + 0.5
    assert link.runs["/v1/fleet/pull-messages"] == 1  # nothing pushed: Flower's answer is not asked again


def test_a_held_pull_gets_the_message_as_soon_as_the_server_pushes_it() -> None:
    link = FakeLink()
    (seconds, response), _ = _exchange(link, (_pull(7), 0.0), (("/v1/runtime/push-messages", b"7"), 0.2))
    assert len(PullMessagesResponse.FromString(response.content).messages_list) == 1
    assert 0.15 < seconds < 0.6  # answered on the push, not at the end of the hold
    assert link.runs["/v1/fleet/pull-messages"] == 2


def test_a_push_while_the_pull_is_being_answered_is_not_missed() -> None:
    link = FakeLink()

    async def push_meanwhile() -> None:  # lands after Flower looked, before the pull starts to wait
        transport = httpx.ASGITransport(app=held)
        async with httpx.AsyncClient(transport=transport, base_url="http://superlink") as client:
            asyncio.get_running_loop().create_task(client.post("/v1/runtime/push-messages", content=b"7"))
            await asyncio.sleep(0.05)

    held = HeldPulls(link, hold_s=HOLD)
    link.on_pull = push_meanwhile

    async def go() -> tuple[float, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=held), base_url="http://superlink") as client:
            return await _post(client, _pull(7))

    seconds, response = asyncio.run(go())
    assert len(PullMessagesResponse.FromString(response.content).messages_list) == 1
    assert seconds < HOLD / 2
    assert link.runs["/v1/fleet/pull-messages"] == 2  # the first look found nothing


def test_an_object_pull_waits_for_its_own_object_only() -> None:
    link = FakeLink()
    link.objects = {"weights": b"", "other": b""}  # announced, not uploaded
    (seconds, response), _, _ = _exchange(link, (_pull_object("weights"), 0.0), (_push_object("other"), 0.1),
                                          (_push_object("weights"), 0.3))
    answer = PullObjectResponse.FromString(response.content)
    assert answer.object_available and answer.object_content == b"arrays"
    assert 0.25 < seconds < 0.8
    assert link.runs["/v1/fleet/pull-object"] == 2  # the push of another object did not re-run it


def test_unknown_objects_and_refusals_are_answered_at_once() -> None:
    link = FakeLink()
    [(seconds, response)] = _exchange(link, (_pull_object("never-announced"), 0.0))
    assert not PullObjectResponse.FromString(response.content).object_found and seconds < 0.3
    refused = FakeLink(status=401)
    [(seconds, response)] = _exchange(refused, (_pull(7), 0.0))
    assert response.status_code == 401 and seconds < 0.3


def test_other_requests_pass_straight_through() -> None:
    link = FakeLink()
    [(seconds, response)] = _exchange(link, (("/v1/fleet/send-node-heartbeat", b""), 0.0))
    assert response.status_code == 200 and seconds < 0.3 and link.runs == {"/v1/fleet/send-node-heartbeat": 1}


@pytest.mark.parametrize("token", [None, "t" * 40], ids=["insecure", "guarded"])
def test_the_superlink_holds_pulls_inside_the_guard(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    import flwr.superlink.main as superlink_main

    monkeypatch.setattr(superlink_main, "_get_middleware", superlink_main._get_middleware)  # restored after
    superlink.install_middleware(token, hold_s=2.0)
    layers = [m.cls for m in superlink_main._get_middleware()]
    expected = [HeldPulls] if token is None else [CoordinatorOnly, HeldPulls]
    assert layers[:len(expected)] == expected  # a refused request is never held
    assert HeldPulls not in layers[len(expected):]


def test_an_unreadable_pull_is_passed_to_flower_once_and_never_held() -> None:
    calls: list[bytes] = []

    async def refusing(scope: dict, receive: Any, send: Any) -> None:  # Flower refuses what it cannot parse
        calls.append((await receive()).get("body", b""))
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad request"})

    [(seconds, response)] = _exchange(refusing, (("/v1/fleet/pull-messages", b"\xff not protobuf"), 0.0))
    assert response.status_code == 400 and response.content == b"bad request"
    assert calls == [b"\xff not protobuf"]
    assert seconds < HOLD / 2
