"""Flower's HTTP middleware, each layer run only on the requests it can act on.

Flower 1.42 serves the SuperLink's Fleet, Control and Runtime APIs from one FastAPI app with eight
middleware layers (``_get_middleware`` in ``flwr/superlink/main.py``), all Starlette
``BaseHTTPMiddleware``s, and every request passes through all eight. Six of them act on one API only
(the four ``Control*`` layers on ``/v1/control/``, node authentication and the fleet event log on
``/v1/fleet/``); on every other request their ``dispatch`` checks the path and calls the next layer.
(Flower 1.41 had a ninth, ``RuntimeTracingMiddleware``, acting only with tracing switched on; 1.42
dropped it from the SuperLink and the SuperNode.) That check is cheap,
but a ``BaseHTTPMiddleware`` layer is not: each one runs the request in a task group with memory
streams and re-wraps the response, on the SuperLink's single event loop. With 20 sites polling four
times a second over TLS, the SuperLink's loop was busy ~80% of a round, most of it in these layers
(py-spy, benchmarks/transport_overhead.py's 20-site federation), and every site's request waited in line.

:func:`scoped` keeps every layer, its arguments and its order, and puts each of those six behind a
pure-ASGI gate that hands it exactly the requests its own check lets through; the others go straight to
the next layer, as the layer itself would send them. Layers not listed here (the protobuf translation,
the error translator, anything an extension or a newer Flower adds) stay on every request. The gates
decide on ``scope["path"]``, the path the router dispatches on, so a request reaches a Fleet or Control
handler only through that API's layers. :data:`FLOWER_SUPERLINK_LAYERS` and :data:`PASS_THROUGH` record
what this was written against; tests/test_scoped_middleware.py compares both with the installed Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

Scope = dict[str, Any]

CONTROL = "/v1/control/"
FLEET = "/v1/fleet/"


def _under(prefix: str) -> Callable[[Scope], bool]:
    def applies(scope: Scope) -> bool:
        return str(scope.get("path", "")).startswith(prefix)

    applies.__name__ = f"under {prefix}"
    return applies


#: "module.Class" of a Flower middleware -> the requests it can act on
SCOPES: dict[str, Callable[[Scope], bool]] = {
    "flwr.superlink.routers.control.middlewares.ControlSensitiveResponseMiddleware": _under(CONTROL),
    "flwr.superlink.routers.control.middlewares.ControlAuthenticationMiddleware": _under(CONTROL),
    "flwr.superlink.routers.control.middlewares.ControlLicenseMiddleware": _under(CONTROL),
    "flwr.superlink.routers.control.middlewares.ControlEventLogMiddleware": _under(CONTROL),
    "flwr.superlink.routers.fleet.node_auth.NodeAuthMiddleware": _under(FLEET),
    "flwr.superlink.routers.fleet.middlewares.FleetEventLogMiddleware": _under(FLEET),
}


#: Flower's SuperLink middleware (``_get_middleware`` in ``flwr/superlink/main.py``), outermost first, in the
#: release this module was written against: review :data:`SCOPES` whenever it changes.
FLOWER_SUPERLINK_LAYERS = (
    "flwr.superlink.routers.control.middlewares.ControlSensitiveResponseMiddleware",
    "starlette.middleware.base.BaseHTTPMiddleware",  # dispatch=http_error_translator
    "flwr.superlink.routers.control.middlewares.ControlAuthenticationMiddleware",
    "flwr.superlink.routers.control.middlewares.ControlLicenseMiddleware",
    "flwr.supercore.protobuf.translation.ProtobufTranslationMiddleware",
    "flwr.superlink.routers.control.middlewares.ControlEventLogMiddleware",
    "flwr.superlink.routers.fleet.node_auth.NodeAuthMiddleware",
    "flwr.superlink.routers.fleet.middlewares.FleetEventLogMiddleware",
)
#: class name of each layer in :data:`SCOPES` -> the check at the top of its ``dispatch`` that passes every
#: other request through unchanged (the gate is correct only while that check is there)
PASS_THROUGH = {
    "ControlSensitiveResponseMiddleware": "_is_control_sensitive_route(request)",
    "ControlAuthenticationMiddleware": "if not _is_control_path(request.url.path)",
    "ControlLicenseMiddleware": "not _is_control_path(request.url.path)",
    "ControlEventLogMiddleware": "if not _is_control_path(request.url.path)",
    "NodeAuthMiddleware": 'if request.url.path.startswith("/v1/fleet/")',
    "FleetEventLogMiddleware": 'if not request.url.path.startswith("/v1/fleet/")',
}


def _name(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}"


class Gated:
    """Pure ASGI: ``layer`` for HTTP requests where ``applies(scope)``; everything else to ``app`` directly."""

    def __init__(self, app: Any, layer: Middleware, applies: Callable[[Scope], bool]) -> None:
        cls, args, kwargs = layer
        self.app = app
        self.layer = cls(app, *args, **kwargs)
        self.applies = applies

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and self.applies(scope):
            await self.layer(scope, receive, send)
        else:  # what a BaseHTTPMiddleware does with non-HTTP scopes, and these layers with these requests
            await self.app(scope, receive, send)


def scoped(layers: list[Middleware]) -> list[Middleware]:
    """``layers`` in the same order, each listed in :data:`SCOPES` behind its gate."""
    out = []
    for layer in layers:
        applies = SCOPES.get(_name(layer.cls))
        out.append(layer if applies is None else Middleware(Gated, layer=layer, applies=applies))
    return out


def gated_factory(cls: type) -> Callable[[Any], Gated]:
    """For ``app.add_middleware(cls)`` call sites: a factory that builds ``cls`` behind its gate."""
    applies = SCOPES[_name(cls)]
    # a BaseHTTPMiddleware class is such a factory; Starlette's factory protocol does not say so
    return functools.partial(Gated, layer=Middleware(cls), applies=applies)  # type: ignore[arg-type]  # see above
