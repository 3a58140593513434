"""A Grid that hands every call to another: the base of FedShield's grid wrappers.

Flower's ServerApp talks to the SuperLink through a :class:`flwr.serverapp.Grid`. FedShield wraps it to
change one behaviour at a time (:mod:`fedshield.server.prompt_grid`: prompt reply polling;
:mod:`fedshield.server.admitted_grid`: refused sites hidden); each wrapper overrides only what it changes.
``get_nodes`` is delegated too: Flower's base class would drop every field of a node but its id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid


class DelegatingGrid(Grid):
    """Every call goes to ``inner``."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run):
        return self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)
