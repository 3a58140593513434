"""Before round 1: wait for the sites, ask each to describe its data, agree on one schema.

The server holds no data, yet must build the model (tabular models depend on the sites' columns) and
must refuse a federation whose sites disagree (different columns, classes or task) before anyone
trains. Each site answers a FedShield QUERY with its schema and example counts (see
``fedshield.client.client_app.fedshield_query_mod``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import DataSchema

QUERY_RECORD = "fedshield"


def wait_for_sites(grid: Grid, minimum: int, *, timeout: float,
                   on_progress: Callable[[int], None] | None = None) -> list[int]:
    """Poll until ``minimum`` SuperNodes are connected; ``timeout`` seconds (0 = forever)."""
    deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
    last = -1
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) != last and on_progress is not None:
            on_progress(len(nodes))
        last = len(nodes)
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(f"only {len(nodes)} of --min-clients {minimum} sites joined within {timeout:.0f} s; "
                              "start more `fl-client join` or lower --min-clients")
        time.sleep(0.2)


def query_sites(grid: Grid, node_ids: list[int], cfg: RunConfig, action: str,
                *, timeout: float, extra: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Send a FedShield QUERY to each node; return node id -> reply config (``error`` key on failure)."""
    payload = {**cfg.to_flower(), "action": action, **(extra or {})}
    messages = [
        Message(content=RecordDict({QUERY_RECORD: ConfigRecord(payload)}), dst_node_id=nid,
                message_type=MessageType.QUERY)
        for nid in node_ids
    ]
    replies: dict[int, dict[str, Any]] = {nid: {"error": "no reply"} for nid in node_ids}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        nid = reply.metadata.src_node_id
        if reply.has_error():
            replies[nid] = {"error": reply.error.reason}
        else:
            replies[nid] = dict(reply.content.config_records.get(QUERY_RECORD, ConfigRecord()))
    return replies


def tell_refused(grid: Grid, refused: dict[int, str], cfg: RunConfig) -> None:
    """Tell each refused node why (a ``refused`` QUERY; ``fl-client join`` prints the reason and exits), without
    waiting for an answer: a site that ignores it is left out of the run all the same."""
    if not refused:
        return
    grid.push_messages([
        Message(content=RecordDict({QUERY_RECORD: ConfigRecord({**cfg.to_flower(), "action": "refused",
                                                                 "reason": reason})}),
                dst_node_id=nid, message_type=MessageType.QUERY)
        for nid, reason in refused.items()])


def agree_schema(replies: dict[int, dict[str, Any]]) -> tuple[DataSchema, dict[int, dict[str, Any]]]:
    """The schema every healthy site shares; raise ``ConfigError`` naming the site that differs."""
    healthy = {nid: r for nid, r in replies.items() if "error" not in r}
    if not healthy:
        reasons = "; ".join(f"{r.get('site', nid)}: {r['error']}" for nid, r in replies.items())
        raise ConfigError(f"no site could load its data ({reasons})")
    first_id = min(healthy)
    schema = DataSchema.from_config(healthy[first_id])
    for nid, reply in healthy.items():
        problem = schema.mismatch(DataSchema.from_config(reply))
        if problem:
            raise ConfigError(f"site {reply.get('site', nid)} does not match site "
                              f"{healthy[first_id].get('site', first_id)}: {problem}; all sites must share one format")
    return schema, healthy
