"""A site refuses, before touching its data, a run whose task is not on its allowlist."""

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedshield.client.site_policy import allowed_tasks, site_policy_mod


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message needs the identity a ClientApp process has while it runs a task."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _context(tmp_path: Path, task: str, allowed: str = "") -> Context:
    node_config = {"data-path": str(tmp_path / "no-such-data"), "site-name": "hospital_a",
                   "events-file": str(tmp_path / "events.jsonl"), "allowed-tasks": allowed}
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={"task": task})


def _message() -> Message:
    return Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)


def test_builtin_tasks_are_always_allowed_and_named_ones_added():
    assert {"digits-cnn", "tabular"} <= allowed_tasks({})
    assert "my-task" in allowed_tasks({"data-path": "/d", "allowed-tasks": "my-task, other"})


def test_unlisted_task_is_refused_without_running_anything(tmp_path: Path, caplog):
    called = []
    reply = site_policy_mod(_message(), _context(tmp_path, "evil-task"), lambda m, c: called.append(m))
    assert called == []  # the ClientApp (and so the data loader) never ran
    assert reply.has_error() and "site refuses task 'evil-task'" in reply.error.reason
    assert "--allow-task evil-task" in reply.error.reason
    assert any("site refuses task" in r.getMessage() for r in caplog.records)
    event = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert event["event"] == "refused"
    assert not (tmp_path / "no-such-data").exists()


def test_allowed_task_passes_through(tmp_path: Path):
    sentinel = object()
    assert site_policy_mod(_message(), _context(tmp_path, "my-task", "my-task"), lambda m, c: sentinel) is sentinel
    assert site_policy_mod(_message(), _context(tmp_path, "digits-cnn"), lambda m, c: sentinel) is sentinel
