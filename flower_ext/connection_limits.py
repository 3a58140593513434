"""The SuperLink's connections: idle ones and unfinished TLS handshakes are closed after a deadline.

Flower 1.42 serves the SuperLink with ``uvicorn.run`` (``flwr/superlink/cli/flower_superlink.py``). Uvicorn
times a connection out only between two requests (keep-alive, 5 s): a connection that never sends a
request, or sends half its headers, was held for good, and an unfinished TLS handshake for asyncio's
60 s. :func:`install` rebinds the ``uvicorn`` that module calls to one whose ``run`` adds, from
:class:`~fedshield.flower_ext.network_limits.NetworkLimits`:

* ``http=``:class:`IdleClosingProtocol`: uvicorn's own HTTP protocol, which also closes a connection that
  has not begun a new request (complete headers) within ``idle_timeout_s`` of opening or of its last answer,
  and one from a peer address that already holds ``max_connections_per_peer`` open connections (an IPv6
  peer's whole /64 network counting as one address: :func:`peer_share`; counted
  once a connection is established, after its TLS handshake: an unfinished handshake holds no request
  body and is closed by the loop below);
* ``loop=``:func:`handshake_limited_loop`: uvicorn's event loop (uvloop where installed), whose servers end a
  TLS handshake not finished within ``idle_timeout_s``;
* ``timeout_keep_alive``: ``min(5 s, idle_timeout_s)``.

A body that stalls is :mod:`fedshield.flower_ext.body_limit`'s. A request in progress (a long poll held
by :mod:`fedshield.flower_ext.held_pulls`) is never idle. Before serving, the rebound ``run`` checks that
the app it serves holds :class:`~fedshield.flower_ext.body_limit.BodyLimit`; security code, it fails closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from collections import Counter
from importlib import import_module
from types import ModuleType
from typing import Any

from fedshield.common.errors import FedShieldError
from fedshield.flower_ext.body_limit import BodyLimit
from fedshield.flower_ext.network_limits import NetworkLimits
from fedshield.flower_ext.version_check import FLOWER_VERSION, installed_flower_version, rebinding_point

#: what FedShield sets on uvicorn.run; Flower setting any of them itself is a changed hook
OWN_OPTIONS = ("http", "loop", "timeout_keep_alive")

_limits: NetworkLimits | None = None  # set by install(), read by the protocol and loop uvicorn builds


class LimitsNotActive(FedShieldError):
    """The SuperLink would serve without FedShield's network limits."""


def _current() -> NetworkLimits:
    if _limits is None:
        raise LimitsNotActive("the SuperLink's network limits were not installed; start it through "
                              "fedshield.flower_ext.superlink_main")
    return _limits


def _uvicorn_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn's ``http="auto"`` picks (httptools where installed, else h11)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


#: open connections per peer address; one event loop serves them all, so no lock is needed
_open_per_peer: Counter[str] = Counter()
_last_refusal_log: dict[str, float] = {}
REFUSAL_LOG_EVERY_S = 60.0


def peer_share(address: str) -> str:
    """The share of connections an address counts against: an IPv4 address itself, an IPv6 address's /64
    network (one host is routinely given a whole /64, so counted per address one peer could open 2^64
    shares), an IPv4-mapped IPv6 address as its IPv4 address; anything else (a Unix socket) as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local address may carry its zone
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _peer_address(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return peer_share(str(peer[0]) if isinstance(peer, tuple) and peer else str(peer))


class IdleClosingProtocol(_uvicorn_protocol()):  # type: ignore[misc]  # a class uvicorn chooses at import
    """Uvicorn's HTTP protocol, closing a connection that begins no request within ``idle_timeout_s``, and one
    that would take its peer address past ``max_connections_per_peer`` open connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_s = _current().idle_timeout_s
        self._idle_timer: asyncio.TimerHandle | None = None
        self._counted_peer: str | None = None

    def connection_made(self, transport: Any) -> None:
        peer = _peer_address(transport)
        cap = _current().max_connections_per_peer
        if _open_per_peer[peer] >= cap:
            now = time.monotonic()
            if now - _last_refusal_log.get(peer, -REFUSAL_LOG_EVERY_S) >= REFUSAL_LOG_EVERY_S:
                _last_refusal_log[peer] = now
                print(f"FedShield limits: {peer} holds {cap} open connections (--max-connections-per-peer); "
                      "further ones are closed", file=sys.stderr, flush=True)
            transport.close()  # before uvicorn sees it: no request is read from it
            return
        _open_per_peer[peer] += 1
        self._counted_peer = peer
        super().connection_made(transport)
        self._arm_idle_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted_peer is None:  # refused in connection_made: uvicorn never set it up
            return
        _open_per_peer[self._counted_peer] -= 1
        if _open_per_peer[self._counted_peer] <= 0:
            del _open_per_peer[self._counted_peer]
        self._counted_peer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        super().connection_lost(exc)

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(self._idle_s, self._close_if_idle, self.cycle)

    def _close_if_idle(self, cycle_when_armed: Any) -> None:
        """Close unless a request began since the timer was armed (uvicorn makes a new cycle per request)."""
        self._idle_timer = None
        idle = self.cycle is cycle_when_armed and (self.cycle is None or self.cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()


def _base_loop_class() -> type[asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.SelectorEventLoop
    return uvloop.Loop


class _HandshakeLimitedLoop(_base_loop_class()):  # type: ignore[misc]  # uvloop's loop where installed
    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", _current().idle_timeout_s)
        return await super().create_server(*args, **kwargs)


def handshake_limited_loop() -> asyncio.AbstractEventLoop:
    """Uvicorn's loop factory (``loop="fedshield.flower_ext.connection_limits:handshake_limited_loop"``)."""
    return _HandshakeLimitedLoop()


def _flower_cli_module() -> ModuleType:
    # importlib: Flower's package re-exports the function flower_superlink under its module's name
    return import_module("flwr.superlink.cli.flower_superlink")


class _UvicornWithLimits:
    """Stands in for the ``uvicorn`` module in Flower's SuperLink CLI: ``run`` with the limits added."""

    def __init__(self, uvicorn: ModuleType, limits: NetworkLimits) -> None:
        self._uvicorn = uvicorn
        self._limits = limits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uvicorn, name)

    def run(self, app: Any, **kwargs: Any) -> None:
        clashes = [name for name in OWN_OPTIONS if name in kwargs]
        if clashes:
            raise LimitsNotActive(f"flwr {installed_flower_version()} sets uvicorn's {', '.join(clashes)} itself, "
                                  f"where FedShield bounds the SuperLink's connections; install flwr=={FLOWER_VERSION}")
        if not any(getattr(layer, "cls", None) is BodyLimit for layer in getattr(app, "user_middleware", [])):
            raise LimitsNotActive("the SuperLink app lacks FedShield's request size limit, so it is not served; "
                                  f"install flwr=={FLOWER_VERSION}")
        print(f"FedShield limits: request bodies up to {self._limits.max_message_bytes:,} bytes; idle connections "
              f"and TLS handshakes closed after {self._limits.idle_timeout_s:g} s; at most "
              f"{self._limits.max_connections_per_peer} open connections per peer address", file=sys.stderr,
              flush=True)
        self._uvicorn.run(app, **kwargs, http=IdleClosingProtocol,
                          loop=f"{__name__}:{handshake_limited_loop.__name__}",
                          timeout_keep_alive=self._limits.keep_alive_s)


def install(limits: NetworkLimits) -> None:
    """In the SuperLink's process, before Flower's ``flower-superlink`` serves: bound its connections."""
    global _limits
    cli = _flower_cli_module()
    uvicorn = rebinding_point(cli, "uvicorn", "bounds the SuperLink's connections")
    _limits = limits
    cli.uvicorn = _UvicornWithLimits(uvicorn, limits)  # type: ignore[attr-defined]  # the door rebinds Flower's server
