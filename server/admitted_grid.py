"""A Grid without the sites the handshake refused: they take no part in the run.

Flower's legacy workflow samples rounds from the node ids its grid lists (its client manager asks
``get_node_ids()`` before every round), so a node left out of that list is never sent the global model and
never contributes an update. :class:`AdmittedGrid` delegates everything to Flower's grid, hides the
refused node ids from both listings, and raises on a message addressed to one of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedshield.server.delegating_grid import DelegatingGrid


class RefusedNodeError(RuntimeError):
    """A message was addressed to a node the run refused."""


class AdmittedGrid(DelegatingGrid):
    """``inner`` without the node ids in ``refused``."""

    def __init__(self, inner: Grid, refused: Iterable[int]) -> None:
        super().__init__(inner)
        self.refused = frozenset(int(n) for n in refused)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.inner.get_node_ids() if n not in self.refused]

    def get_nodes(self) -> Iterable[Any]:
        return [node for node in self.inner.get_nodes() if node.node_id not in self.refused]

    def _admitted(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            if msg.metadata.dst_node_id in self.refused:
                raise RefusedNodeError(f"node {msg.metadata.dst_node_id} was refused and takes no part in the run")
        return messages

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(self._admitted(messages))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(self._admitted(messages), timeout=timeout)
