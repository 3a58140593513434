"""Which Ray node trained a virtual site: ``fl-sim run`` records it in ``results.json`` for each training reply.

On a Ray cluster (``--ray-address``) the virtual sites' ClientApps run in actors on whichever nodes Ray
places them; each training reply's metrics gain ``worker-node`` (Ray's id of the node the actor ran on) and
``worker-node-ip`` (that node's address, as Ray knows it), so a run says which machines took part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Context, Message


def ray_node() -> tuple[str, str]:
    """(node id, node address) of the Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


class RayNodeTag:
    """ClientApp mod of a simulation: adds the Ray node's id and address to each training reply's metrics."""

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        from flwr.app import Message, MessageType

        from fedshield.flower_ext.legacy_api import fitres_to_recorddict, recorddict_to_fitres

        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        res = recorddict_to_fitres(reply.content, keep_input=True)
        res.metrics["worker-node"], res.metrics["worker-node-ip"] = ray_node()
        return Message(fitres_to_recorddict(res, keep_input=True), reply_to=msg)
