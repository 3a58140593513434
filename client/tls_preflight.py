"""Check the server's TLS certificate against the site's CA before a SuperNode is started.

Flower's SuperNode retries a failing TLS handshake until its ``--max-wait-time`` runs out and then logs a
generic connection error. A site should instead learn at once, in one line, *why* it does not trust the
server: a certificate from another federation, a name that is not in the certificate, an expired or a
not-yet-valid certificate. This does one handshake with Python's ``ssl`` (OpenSSL's standard chain and
hostname verification, nothing hand-rolled) and translates the verdict.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from fedshield.common.errors import FedShieldError, ServerUnreachableError


class ServerNotTrustedError(FedShieldError):
    """The server's certificate does not verify against this site's CA."""


def _reason(err: ssl.SSLCertVerificationError, host: str) -> str:
    message = (err.verify_message or str(err)).lower()
    if "expired" in message:
        return ("the server's certificate has expired; the coordinator must renew it "
                "(fl-server init --renew-server-cert)")
    if "not yet valid" in message:
        return "the server's certificate is not valid yet (check both clocks, or the coordinator re-issues it)"
    if "hostname mismatch" in message or "ip address mismatch" in message:
        return (f"the server's certificate is not valid for {host!r}; connect with a name or address it lists "
                "(fl-server init --server-name/--server-ip), as written in your kit")
    if "self-signed" in message or "unable to get local issuer" in message or "certificate signature" in message:
        return ("the server's certificate was not issued by this kit's CA: the kit belongs to another federation, "
                "or this is not your coordinator")
    return f"TLS verification failed: {err.verify_message or err}"


def check_server_certificate(host: str, port: int, ca_file: Path, timeout: float = 10.0, *,
                             wait_s: float = 0.0) -> None:
    """Raise :class:`ServerNotTrustedError` unless ``host:port`` presents a certificate ``ca_file`` vouches for.

    A connection that is accepted and then reset or closed before the handshake completes is what a TCP
    proxy, load balancer or port forwarder in front of a coordinator that is not up yet does; such
    handshakes are retried for ``wait_s`` seconds (then :class:`ServerUnreachableError`). A certificate
    the site does not trust, or a server that speaks no TLS, is refused at once.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock, \
                    context.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as err:
            raise ServerNotTrustedError(f"refusing {host}:{port}: {_reason(err, host)}") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as err:
            if time.monotonic() >= deadline:
                raise ServerUnreachableError(f"{host}:{port}: connections are accepted but closed before TLS "
                                             f"starts ({err.__class__.__name__}); check that `fl-server start` "
                                             "runs behind that address") from None
            time.sleep(0.5)
        except ssl.SSLError as err:
            raise ServerNotTrustedError(f"refusing {host}:{port}: TLS handshake failed ({err.reason or err}); is the "
                                        "server running with TLS (not --insecure)?") from None
