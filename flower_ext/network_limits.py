"""What the SuperLink's port accepts from the network: the largest request body, how long a peer may idle, and
how many connections one peer address may hold open at once.

Anyone who reaches the coordinator's port can send to it before any credential is checked: Flower's
SuperLink reads a Fleet request's whole body before node authentication. Without bounds, four 100 MB
POSTs took a SuperLink from 149 to 954 MiB, never released, and connections that sent nothing (or half a
TLS ClientHello) were held for good. :class:`NetworkLimits` is what ``fl-server start`` hands its SuperLink
process (through the environment, :meth:`NetworkLimits.to_env`), where
:mod:`fedshield.flower_ext.body_limit` and :mod:`fedshield.flower_ext.connection_limits` enforce it.

The largest legitimate request is small and known: Flower sends every array in chunks of at most
``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes (5 MiB), each one request, whatever the model's size. The one
exception is SecAgg+, where a site's masked update travels whole in one ConfigRecord: 4 bytes a parameter
(uint32, up to 512 sites) or 8 (int64). :func:`largest_message_bytes` is that bound for a model;
:func:`default_max_message_bytes` the cap a run gets before the sites have said what model they train.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fedshield.common.errors import ConfigError

MAX_MESSAGE_ENV = "FEDSHIELD_MAX_MESSAGE_BYTES"
IDLE_TIMEOUT_ENV = "FEDSHIELD_IDLE_TIMEOUT_S"
PER_PEER_ENV = "FEDSHIELD_MAX_CONNECTIONS_PER_PEER"
#: open connections one peer address may hold: a SuperNode keeps one or two (a held poll, a push), so this
#: leaves room for a few dozen sites behind one NAT address while 300 idle connections from one peer are not
DEFAULT_MAX_CONNECTIONS_PER_PEER = 64
#: the run-config key that tells the ServerApp the SuperLink's cap (:func:`check_model_fits`)
MAX_MESSAGE_KEY = "max-message-bytes"
MIB = 2**20
#: margin on the largest legitimate message: a request's protobuf framing, object ids and npy headers
MARGIN_BYTES = 3 * MIB
#: cap under SecAgg+ before the model is known (the ServerApp checks the model against it, see below)
SECAGG_DEFAULT_BYTES = 64 * MIB
#: seconds a connection may take to finish its TLS handshake, to send a request's headers, or between two
#: parts of a request's body; and, at most 5 s, to start its next request (uvicorn's keep-alive default)
DEFAULT_IDLE_TIMEOUT_S = 20.0
KEEP_ALIVE_S = 5.0
#: bytes per parameter of a SecAgg+ masked update in the worst case (int64, past 512 sites)
MASKED_BYTES_PER_PARAMETER = 8
#: an npy header of one masked array (``ndarray_to_bytes``)
NPY_HEADER_BYTES = 128


@dataclass(frozen=True)
class NetworkLimits:
    """``max_message_bytes``: a larger request body is refused (HTTP 413) before it is read;
    ``idle_timeout_s``: see :data:`DEFAULT_IDLE_TIMEOUT_S`; ``max_connections_per_peer``: a peer address's
    further connections are closed as they open (see :data:`DEFAULT_MAX_CONNECTIONS_PER_PEER`)."""

    max_message_bytes: int
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER

    @property
    def keep_alive_s(self) -> float:
        """Seconds an idle connection is kept between two requests."""
        return min(KEEP_ALIVE_S, self.idle_timeout_s)

    def to_env(self) -> dict[str, str]:
        """The variables the SuperLink process reads back with :meth:`from_env`."""
        return {MAX_MESSAGE_ENV: str(self.max_message_bytes), IDLE_TIMEOUT_ENV: repr(self.idle_timeout_s),
                PER_PEER_ENV: str(self.max_connections_per_peer)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> NetworkLimits:
        """The limits ``fl-server start`` set, or the defaults (no SuperLink FedShield starts is unbounded)."""
        try:
            limits = cls(int(env.get(MAX_MESSAGE_ENV) or default_max_message_bytes(secagg=False)),
                         float(env.get(IDLE_TIMEOUT_ENV) or DEFAULT_IDLE_TIMEOUT_S),
                         int(env.get(PER_PEER_ENV) or DEFAULT_MAX_CONNECTIONS_PER_PEER))
        except ValueError:
            raise ConfigError(f"${MAX_MESSAGE_ENV}/${IDLE_TIMEOUT_ENV}/${PER_PEER_ENV}: not a number; unset them or "
                              "start the SuperLink through fl-server start") from None
        return limits.checked()

    def checked(self) -> NetworkLimits:
        """Itself; ``ConfigError`` naming the flag when a limit is not positive."""
        if self.max_message_bytes <= 0:
            raise ConfigError("--max-message-mb: must be positive (0 chooses it from the run); pass a size in MB")
        if not math.isfinite(self.idle_timeout_s) or self.idle_timeout_s <= 0:
            raise ConfigError("--idle-timeout: must be a positive number of seconds")
        if self.max_connections_per_peer < 1:
            raise ConfigError("--max-connections-per-peer: must be at least 1 (a site holds one or two)")
        return self


def array_chunk_bytes() -> int:
    """The size of the chunks Flower splits every array into, one request each (5 MiB unless overridden)."""
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    return int(FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)


def largest_message_bytes(parameters: int, arrays: int, *, secagg: bool) -> int:
    """The largest request body a run of a model with ``parameters`` values in ``arrays`` arrays sends,
    margin included: one array chunk, or under SecAgg+ the larger of that and a whole masked update."""
    largest = array_chunk_bytes()
    if secagg:
        largest = max(largest, parameters * MASKED_BYTES_PER_PARAMETER + arrays * NPY_HEADER_BYTES)
    return largest + MARGIN_BYTES


def default_max_message_bytes(*, secagg: bool) -> int:
    """The cap before the model is known: one array chunk and the margin (8 MiB); under SecAgg+, whose
    masked updates travel whole, :data:`SECAGG_DEFAULT_BYTES` (a model of up to about 8 M parameters)."""
    return SECAGG_DEFAULT_BYTES if secagg else largest_message_bytes(0, 0, secagg=False)


def check_model_fits(parameters: int, arrays: int, *, secagg: bool, max_message_bytes: int) -> None:
    """``ConfigError`` naming ``--max-message-mb`` and the size needed when this run's largest message would be
    refused by the SuperLink's cap: raised before round 1, not as a refused upload during it."""
    needed = largest_message_bytes(parameters, arrays, secagg=secagg)
    if needed > max_message_bytes:
        raise ConfigError(f"--max-message-mb {max_message_bytes / MIB:g}: this model's largest message "
                          f"({parameters:,} parameters{', a SecAgg+ masked update' if secagg else ''}) is "
                          f"{needed / MIB:.1f} MB with its margin; restart with --max-message-mb "
                          f"{math.ceil(needed / MIB)} or more")
