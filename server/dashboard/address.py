"""Where the dashboard listens: ``[HOST:]PORT`` parsed, and whether that address is loopback."""

from __future__ import annotations

import ipaddress

from fedshield.common.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"


def parse_listen(value: str, *, flag: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); the host defaults to 127.0.0.1.

    A bad value is a one-line ``ConfigError`` naming ``flag``.
    """
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, value
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {value!r}: expected PORT or HOST:PORT, e.g. 8050 (loopback) or 10.0.0.5:8050")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether only this host can reach a listener on ``host``: 127.0.0.0/8, ::1 or ``localhost``.

    Every other address (a LAN address, 0.0.0.0, ::, a DNS name) is beyond loopback.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
