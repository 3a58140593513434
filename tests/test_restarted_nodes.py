"""A site killed after it took a message and started again at once: the coordinator gets an error, not silence.

Flower 1.42's own link state, driven the way its SuperLink drives it: the ServerApp's message is stored,
the site's node pulls it, the site dies and its restarted SuperNode activates the same node before the
ServerApp asks for the reply. Without FedShield's door the reply never comes (the coordinator hung in
round 1 of tests/test_e2e_resume.py, a race of a few seconds there, made certain here).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store.object_store_factory import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

HEARTBEAT_S = 30.0


@pytest.fixture
def flower_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-memory link state with one run and Flower's own ``get_message_res`` (a test before may have installed
    the door's in this process); the class's method and the task identity are restored afterwards."""
    flowers = InMemoryLinkState.get_message_res
    monkeypatch.setattr(InMemoryLinkState, "get_message_res", getattr(flowers, "__wrapped__", flowers))
    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    state.test_run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    for name, value in (("_run_id", state.test_run_id), ("_node_id", SUPERLINK_NODE_ID),
                        ("_task_id", next(iter(state.task_store)))):
        monkeypatch.setattr(TaskIdentity, name, value)
    yield state


def _site_takes_a_message(state: Any, node_id: int) -> str:
    """The ServerApp sends ``train`` to the node and the node pulls it; returns the message id."""
    message = Message(RecordDict(), node_id, "train", ttl=3600)
    metadata = message.metadata.__dict__  # as Flower's grid fills them in before storing
    metadata["_message_id"], metadata["_run_id"], metadata["_src_node_id"] = (
        str(uuid.uuid4()), state.test_run_id, SUPERLINK_NODE_ID)
    message_id = state.store_message_ins(message)
    assert [m.metadata.message_id for m in state.get_message_ins(node_id, None)] == [message_id]
    return message_id


def _site_restarts(state: Any, node_id: int) -> None:
    time.sleep(0.002)  # the link state's times are ISO strings to the microsecond
    assert state.deactivate_node(node_id)  # the dead process's heartbeats stopped
    time.sleep(0.002)
    assert state.activate_node(node_id, HEARTBEAT_S)  # the restarted SuperNode, the same kit's key


def test_a_message_lost_with_a_restarted_site_is_answered_node_unavailable(flower_state: Any) -> None:
    from fedshield.flower_ext.restarted_nodes import install

    state = flower_state
    node_id = state.create_node("<id:none>", "hospital_b", b"hospital_b's key", HEARTBEAT_S)
    assert state.activate_node(node_id, HEARTBEAT_S)
    lost = _site_takes_a_message(state, node_id)
    _site_restarts(state, node_id)
    assert state.get_message_res({lost}, state.test_run_id) == []  # Flower alone: no reply, now or ever

    install()
    replies = state.get_message_res({lost}, state.test_run_id)
    assert [r.metadata.reply_to_message_id for r in replies] == [lost]
    assert replies[0].has_error() and "Node Unavailable" in replies[0].error.reason


def test_a_message_the_restarted_site_itself_took_still_waits_for_its_reply(flower_state: Any) -> None:
    from fedshield.flower_ext.restarted_nodes import install

    install()
    state = flower_state
    node_id = state.create_node("<id:none>", "hospital_b", b"hospital_b's key", HEARTBEAT_S)
    assert state.activate_node(node_id, HEARTBEAT_S)
    _site_restarts(state, node_id)
    running = _site_takes_a_message(state, node_id)  # taken by the process now up: its reply may still come
    assert state.get_message_res({running}, state.test_run_id) == []
