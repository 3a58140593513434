"""Naming sites by their enrolled keys: the handshake's claims against the SuperLink's node records.

The end-to-end attack (a modified site with another site's name) is tests/test_e2e_site_identity.py; this
pins each case of the rule on Flower's own node records and a grid that hides the refused nodes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611

from fedshield.server.admitted_grid import AdmittedGrid, RefusedNodeError
from fedshield.server.site_identity import EnrolledNames, identity_required, refuse_false_claims


class _Grid:
    """The two calls the identity rule makes of Flower's grid, over fixed node records."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes
        self.pushed: list[Any] = []

    def get_nodes(self) -> list[NodeInfo]:
        return self.nodes

    def get_node_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes]

    def push_messages(self, messages: Any) -> list[str]:
        self.pushed.extend(messages)
        return ["id"] * len(self.pushed)


def test_each_reply_is_named_by_its_key_and_a_false_claim_is_refused() -> None:
    grid = _Grid([NodeInfo(node_id=1, name="hospital_a"), NodeInfo(node_id=2, name="hospital_b"),
                  NodeInfo(node_id=3, name=""), NodeInfo(node_id=4, name="hospital_d")])
    replies: dict[int, dict[str, Any]] = {
        1: {"site": "hospital_b", "examples-train": 10},  # hospital_a's key, claiming hospital_b
        2: {"site": "hospital_b", "examples-train": 20},  # the real hospital_b
        3: {"site": "hospital_c"},  # a key registered without a name
        4: {"error": "no reply"},  # never answered: named by its key, not refused for a claim it never made
        5: {"site": "hospital_e"},  # a node the SuperLink no longer lists: no enrolled name, refused
    }
    refused = refuse_false_claims(replies, EnrolledNames(grid))  # type: ignore[arg-type]
    assert set(refused) == {1, 3, 5}
    assert replies[1]["site"] == "hospital_a" and replies[1]["error"] == refused[1]
    assert "'hospital_a'" in refused[1] and "'hospital_b'" in refused[1]
    assert replies[2] == {"site": "hospital_b", "examples-train": 20}
    assert replies[3]["site"] == "node-3" and "no enrolled name" in refused[3]
    assert replies[4] == {"site": "hospital_d", "error": "no reply"}
    grid.nodes.append(NodeInfo(node_id=6, name="hospital_f"))
    assert EnrolledNames(grid)(6) == "hospital_f"  # type: ignore[arg-type]  # a site that connected later


def test_only_a_federation_run_requires_enrolled_names() -> None:
    assert identity_required({"site-identity": "enrolled"})
    assert not identity_required({}) and not identity_required({"site-identity": "claimed"})


def test_a_refused_node_is_neither_listed_nor_sent_anything() -> None:
    inner = _Grid([NodeInfo(node_id=1, name="a"), NodeInfo(node_id=2, name="b")])
    grid = AdmittedGrid(inner, [1])  # type: ignore[arg-type]
    assert list(grid.get_node_ids()) == [2] and [n.node_id for n in grid.get_nodes()] == [2]

    def message(dst: int) -> Any:  # what the grid reads of a message (Flower's needs a running ServerApp)
        return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst))

    with pytest.raises(RefusedNodeError, match="node 1 was refused"):
        grid.push_messages([message(2), message(1)])
    assert inner.pushed == []
    grid.push_messages([message(2)])
    assert [m.metadata.dst_node_id for m in inner.pushed] == [2]
