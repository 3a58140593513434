"""Simulation engine fix: hand queued messages to virtual sites without polling every site.

Flower 1.41 and 1.42's simulation engine (``flwr/server/superlink/fleet/vce/vce_api.py``,
``add_messages_to_queue``) asks its link state for the next message of *every* virtual node, one node
at a time, every 0.1 s, and each question scans every stored message. With 1,000 nodes that loop
alone keeps ~40 % of a core busy in the driver while the sites train (measured with
``benchmarks/sim_scale.py``: rounds 1.25x slower at 1,000 sites than at 10). This replacement looks
at the stored messages once per tick, collects the nodes that have an undelivered one, and asks the
state only for those (with Flower's own ``get_message_ins``, one message per node per tick as
before). For a state without the in-memory store it runs Flower's original. ``fl-sim``'s runner calls
:func:`install` before it starts the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import Queue
from typing import Any

from fedshield.flower_ext.version_check import check_flower_version, rebinding_point

TICK_S = 0.1  # Flower's own interval


def pending_nodes(state: Any) -> set[int]:
    """Destination nodes of stored messages that were not delivered yet."""
    with state.lock:
        messages = list(state.message_ins_store.values())
    return {m.metadata.dst_node_id for m in messages if m.metadata.delivered_at == ""}


def make_add_messages_to_queue(original: Callable[..., None]) -> Callable[..., None]:
    """A drop-in for ``vce_api.add_messages_to_queue`` that polls only nodes with pending messages."""

    def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: Any, f_stop: threading.Event) -> None:
        if not hasattr(state, "message_ins_store") or not hasattr(state, "lock"):
            original(state, queue, nodes_mapping, f_stop)
            return
        while not f_stop.is_set():
            for node_id in sorted(pending_nodes(state)):
                if node_id in nodes_mapping:
                    for msg in state.get_message_ins(node_id=node_id, limit=1):
                        queue.put(msg)
            f_stop.wait(TICK_S)

    add_messages_to_queue.fedshield_patch = True  # type: ignore[attr-defined]  # a marker on the function object
    return add_messages_to_queue


def install() -> None:
    """In ``fl-sim``'s process, before the engine starts: replace Flower's function in the module that calls
    it (idempotent)."""
    check_flower_version("simulation engine")
    from flwr.server.superlink.fleet.vce import vce_api

    rebinding_point(vce_api, "add_messages_to_queue", "hands queued messages to virtual sites")
    if not getattr(vce_api.add_messages_to_queue, "fedshield_patch", False):
        vce_api.add_messages_to_queue = make_add_messages_to_queue(vce_api.add_messages_to_queue)
