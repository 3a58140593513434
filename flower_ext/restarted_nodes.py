"""A message a site had taken when its SuperNode went down is answered with an error once the site is back.

Flower 1.42's SuperLink answers a message whose destination node is offline with an error reply ("Node
Unavailable"), but only when the ServerApp asks while the node is offline: ``get_message_res`` compares the
node's ``online_until`` with the time of the pull. A site killed after it took a message, whose SuperNode is
started again at once, activates the same node (its kit's key) within seconds of that node being marked
offline; a ServerApp that did not ask in those seconds waited for the lost message's reply for ever. The
coordinator hung that way in round 1's evaluation in three of four runs of tests/test_e2e_resume.py one
morning (hospital_b killed and restarted), and never in others: a race of a few seconds.

:func:`install` wraps the in-memory link state's ``get_message_res`` (FedShield's SuperLink keeps its state
in memory): a message delivered to its node before the node's latest activation, and still without a
reply, is answered with the error Flower gives for an unavailable node. The restarted site never saw that
message; its reply cannot come.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from fedshield.flower_ext.version_check import FLOWER_VERSION, FlowerHookMissing, hook, installed_flower_version


def lost_in_restart(message: Any, node: Any) -> bool:
    """Whether ``message`` (a delivered ``Message``) went to an earlier life of ``node`` (the link state's
    node record): taken before the node's latest activation. Both times are ``now().isoformat()`` strings of
    one clock and format, so they compare as text."""
    delivered = message.metadata.delivered_at
    activated = getattr(node, "last_activated_at", "") or ""
    return bool(delivered) and bool(activated) and activated > delivered


def install() -> None:
    """In the SuperLink's process: replies lost with a restarted site come back as errors (module doc)."""
    from flwr.server.superlink.linkstate import in_memory_linkstate
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    purpose = "answers messages lost with a restarted site"
    state_class = hook(in_memory_linkstate, "InMemoryLinkState", purpose)
    for name in ("get_message_res", "_store_generated_message"):
        if not hasattr(state_class, name):
            raise FlowerHookMissing(f"flwr {installed_flower_version()}'s InMemoryLinkState has no {name}, where "
                                    f"FedShield {purpose}; install flwr=={FLOWER_VERSION}")
    original = state_class.get_message_res
    if getattr(original, "__wrapped__", None) is not None:
        return  # installed already in this process

    @functools.wraps(original)
    def get_message_res(self: Any, message_ids: set[str], run_id: int) -> list[Any]:
        replies = original(self, set(message_ids), run_id)
        answered = {reply.metadata.reply_to_message_id for reply in replies}
        with self.lock:
            for message_id in message_ids:
                message = self.message_ins_store.get(message_id)
                if (message_id in answered or message is None or message.metadata.run_id != run_id
                        or message_id in self.message_ins_id_to_message_res_id):
                    continue
                node = self.nodes.get(message.metadata.dst_node_id)
                if node is not None and lost_in_restart(message, node):
                    reply = create_message_error_unavailable_res_message(message.metadata, "node_unavail")
                    self._store_generated_message(reply)  # as Flower stores its own errors: the ServerApp pulls them
                    replies.append(reply)
                    print(f"FedShield: node {message.metadata.dst_node_id} was activated again after it took message "
                          f"{message_id[:12]}; that message is answered 'node unavailable'", file=sys.stderr,
                          flush=True)
        return replies

    state_class.get_message_res = get_message_res  # the door wraps Flower's in-memory state
