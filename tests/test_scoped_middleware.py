"""Flower's SuperLink middleware behind path gates: same answers, fewer layers per request.

The gates (flower_ext/scoped_middleware.py) are only correct while each gated layer passes the requests it
is kept from straight through; these tests check the door's record of Flower's layers against the installed
Flower and compare the scoped app's answers with Flower's own for requests to every API, authenticated or not.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings

import flwr
import flwr.superlink.main as superlink_main
import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from starlette.middleware import Middleware

from fedshield.flower_ext import FLOWER_VERSION, superlink, supernode
from fedshield.flower_ext.scoped_middleware import FLOWER_SUPERLINK_LAYERS, PASS_THROUGH, SCOPES, Gated, _name


def test_the_gated_layers_are_flowers_and_each_passes_other_requests_through() -> None:
    assert flwr.__version__ == FLOWER_VERSION  # a newer Flower: review SCOPES against its _get_middleware
    layers = superlink_main._get_middleware()  # pylint: disable=protected-access
    assert [_name(m.cls) for m in layers] == list(FLOWER_SUPERLINK_LAYERS)
    gated = [m.cls for m in layers if _name(m.cls) in SCOPES]
    assert sorted(c.__name__ for c in gated) == sorted(PASS_THROUGH)
    assert sorted(name.rsplit(".", 1)[1] for name in SCOPES) == sorted(PASS_THROUGH)  # no scope for a gone layer
    for cls in gated:
        assert PASS_THROUGH[cls.__name__] in inspect.getsource(cls.dispatch), cls.__name__
    from flwr.superlink.routers.control.middlewares import CONTROL_SENSITIVE_ROUTE_KEYS

    assert all(path.startswith("/v1/control/") for _, path in CONTROL_SENSITIVE_ROUTE_KEYS)


def test_every_flower_route_lies_under_the_api_prefix_its_layers_are_gated_on() -> None:
    app = _app(scope_layers=False)
    paths = []
    for route in app.routes:
        paths += [route.path] if hasattr(route, "path") else [c.path for c in route.effective_route_contexts()]
    apis = {p.split("/")[2] for p in paths if p.startswith("/v1/")}
    assert apis == {"control", "fleet", "runtime"}


class _Recorder:
    seen: list[str] = []

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        _Recorder.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_a_gate_hands_its_layer_only_the_requests_it_applies_to() -> None:
    async def endpoint(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _Recorder.seen = []
    app = Gated(endpoint, Middleware(_Recorder), lambda scope: scope["path"].startswith("/v1/fleet/"))

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return [(await client.get(p)).status_code for p in ("/v1/fleet/x", "/v1/control/y", "/health")]

    assert asyncio.run(go()) == [204, 204, 204]
    assert _Recorder.seen == ["/v1/fleet/x"]


def _app(scope_layers: bool):  # type: ignore[no-untyped-def]
    return superlink.superlink_app(scope_layers)


def _answers(app) -> list[tuple[int, bytes, str | None]]:  # type: ignore[no-untyped-def]
    proto = {"content-type": "application/protobuf"}
    pull = PullMessagesRequest(node=Node(node_id=7)).SerializeToString()
    requests = [
        ("GET", "/health", {}, b""),
        ("POST", "/v1/fleet/pull-messages", proto, pull),  # no node signature
        ("POST", "/v1/fleet/pull-messages", {**proto, "flwr-public-key": "AAAA", "flwr-signature": "AAAA",
                                             "flwr-timestamp": "2026-01-01T00:00:00+00:00"}, pull),
        ("POST", "/v1/fleet/pull-messages", {"content-type": "text/plain"}, b"x"),
        ("POST", "/v1/control/list-runs", proto, b""),  # no account (Flower's OSS build lets it pass)
        ("POST", "/v1/control/get-login-details", proto, b""),  # a sensitive route: no-cache headers
        ("POST", "/v1/runtime/get-nodes", proto, b""),  # no task token
        ("GET", "/v1/nowhere", {}, b""),
    ]

    async def go() -> list[tuple[int, bytes, str | None]]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = []
            for method, path, headers, body in requests:
                r = await client.request(method, path, headers=headers, content=body)
                body = r.content if path != "/v1/control/list-runs" else b"(carries the time of the answer)"
                out.append((r.status_code, body, r.headers.get("cache-control")))
            return out

    return asyncio.run(go())


@pytest.mark.parametrize("node_auth", [True, False], ids=["node-auth", "no-node-auth"])
def test_the_scoped_superlink_answers_every_api_exactly_as_flowers(node_auth: bool) -> None:
    flower, ours = _app(scope_layers=False), _app(scope_layers=True)
    for app in (flower, ours):
        app.state.enable_supernode_auth = node_auth
    assert len(ours.user_middleware) == len(FLOWER_SUPERLINK_LAYERS)
    assert sum(isinstance(m.cls, type) and m.cls is Gated for m in ours.user_middleware) == len(PASS_THROUGH)
    expected = _answers(flower)
    # the checks behind the gates do act: node authentication refuses, the sensitive route is not cached
    assert expected[1][0] == 401 and expected[5][2] == "no-store"
    assert _answers(ours) == expected


def test_the_supernode_gates_its_runtime_layers_as_the_superlink_gates_the_same_layers(monkeypatch) -> None:
    import flwr.supernode.main as supernode_app

    flower_layers = {name: getattr(supernode_app, name) for name in supernode.SCOPED_LAYERS}
    for name, layer in flower_layers.items():
        monkeypatch.setattr(supernode_app, name, layer)  # restored afterwards
        assert PASS_THROUGH[layer.__name__] in inspect.getsource(layer.dispatch), name
    supernode.scope_runtime_layers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = supernode_app.create_app(state_factory=None)  # type: ignore[arg-type]
    gated = [m.cls for m in app.user_middleware if getattr(m.cls, "func", None) is Gated]
    ungated = [m.cls for m in app.user_middleware if getattr(m.cls, "func", None) is not Gated]
    assert sorted(_name(g.keywords["layer"].cls) for g in gated) == sorted(map(_name, flower_layers.values()))
    assert all(g.keywords["applies"] is SCOPES[_name(g.keywords["layer"].cls)] for g in gated)
    assert not {_name(cls) for cls in ungated} & set(SCOPES)  # every layer the SuperLink scopes is scoped here too
