"""`fl-client join`'s orchestration as a library (client/site_join.py): the plan checks the flags, the data
and the ledger and writes nothing; taking part ends on the run's last event, a refusal, a refused key or a
stopped SuperNode, and restarts a SuperNode whose local port was taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedshield.client import site_join
from fedshield.client.events import emit
from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.privacy_ledger import LEDGER_FILE
from fedshield.client.site_join import JoinPlan, SiteCallbacks, plan_join, take_part
from fedshield.common.errors import ConfigError, FedShieldError
from fedshield.common.site_kit import SiteKit

REPLIED = "Receiving: reply\nSending: reply\nSent successfully\n"  # what the SuperNode logs per message


def _join(data: Path, **changes: Any) -> JoinPlan:
    settings: dict[str, Any] = {
        "data": data, "kit": None, "server": None, "insecure": True, "task": None, "target": None, "name": None,
        "dp": True, "epsilon": 8.0, "delta": 0.0, "max_grad_norm": 1.0, "accountant": "rdp", "site_metrics": "dp",
        "allow_repeats": False, "metrics_cost": 0.05, "state_dir": None, "device": "cpu", "threads": 1,
        "allowed_tasks": [], "connect_timeout": 1.0}
    settings.update(changes)
    return plan_join(**settings)


def test_a_plan_checks_the_site_and_writes_nothing(digits_sites: Path, tmp_path: Path) -> None:
    plan = _join(digits_sites / "hospital_a", state_dir=tmp_path / "state", name="h-a")
    site = plan.node_config
    assert (site.task, site.site_name, site.data_path) == ("digits-cnn", "h-a", str(digits_sites / "hospital_a"))
    assert plan.server == site_join.INSECURE_SERVER and plan.train_examples > 0 and plan.val_examples > 0
    assert (plan.epsilon_spent, plan.ledger_delta) == (0.0, None)
    assert plan.state == (tmp_path / "state").resolve() and Path(site.events_file).parent == plan.state
    assert not (tmp_path / "state").exists()


def test_a_plan_refuses_bad_flags_data_and_ledgers(digits_sites: Path, tmp_path: Path) -> None:
    data = digits_sites / "hospital_a"
    with pytest.raises(ConfigError, match="--insecure and --kit"):
        _join(data, kit=tmp_path)
    with pytest.raises(ConfigError, match="no kit"):
        _join(data, insecure=False)
    for flags, message in (({"epsilon": 0.0}, "--epsilon must be positive"), ({"accountant": "x"}, "--accountant"),
                           ({"delta": 1.0}, "--delta"), ({"site_metrics": "some"}, "--site-metrics"),
                           ({"metrics_cost": 2.0}, "--metrics-cost"), ({"server": "nowhere"}, "--server"),
                           ({"delta": 0.5}, "is not below 1/N")):
        with pytest.raises(ConfigError, match=message):
            _join(data, state_dir=tmp_path / "state", **flags)
    with pytest.raises(FedShieldError, match="does not exist"):
        _join(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / LEDGER_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="not a FedShield privacy ledger"):
        _join(data, state_dir=tmp_path / "foreign")
    _join(data, state_dir=tmp_path / "foreign", dp=False)  # without DP the ledger is not read


class _FakeNode:
    """A SuperNode that plays one scripted start after another: (log text, exit code or None, events)."""

    script: list[tuple[str, int | None, list[dict[str, Any]]]] = []
    started: list[int] = []

    def __init__(self, *, local_port: int, node_config: dict[str, Any], log_path: Path, **_: Any) -> None:
        self.local_port, self.log_path, self.code = local_port, log_path, None
        self.events_file = str(node_config["events-file"])
        self.stopped = False

    def start(self) -> None:
        log, self.code, events = self.script.pop(0)
        _FakeNode.started.append(self.local_port)
        with open(self.log_path, "a") as fh:
            fh.write(log)
        for event in events:
            emit(self.events_file, **event)

    def poll(self) -> int | None:
        return self.code

    def stop(self) -> None:
        self.stopped = True


def _take_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: list[Any], *,
               kit: SiteKit | None = None, reconnect_timeout: float = 0.0,
               reconnect_pause: float = 0.0) -> tuple[list[Any], list[int]]:
    """Run take_part against the scripted SuperNode; (events seen, ports restarted on)."""
    monkeypatch.setattr(site_join, "SuperNode", _FakeNode)
    monkeypatch.setattr(site_join, "POLL_INTERVAL", 0.0)
    monkeypatch.setattr(site_join, "RECONNECT_PAUSE", reconnect_pause)
    ports = iter(range(20001, 20100))
    monkeypatch.setattr(site_join.net, "free_port", lambda: next(ports))
    _FakeNode.script, _FakeNode.started = list(script), []
    config = SiteNodeConfig(data_path=str(tmp_path), site_name="hospital_a", task="digits-cnn",
                            state_dir=str(tmp_path), events_file=str(tmp_path / "events.jsonl"))
    plan = JoinPlan(config, kit, "127.0.0.1:9092", 10, 2, 0.0, None, 1.0, 1, reconnect_timeout)
    seen: list[Any] = []
    restarts: list[int] = []
    try:
        take_part(plan, SiteCallbacks(event=seen.append, port_restarted=restarts.append))
    finally:
        assert not (tmp_path / "events.jsonl").exists()
    return seen, restarts


def test_taking_part_ends_when_the_run_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [{"event": "joined-run", "run_id": 1}, {"event": "run-complete", "status": "finished"}]
    seen, restarts = _take_part(tmp_path, monkeypatch, [(REPLIED, None, events)])
    assert [e["event"] for e in seen] == ["joined-run", "run-complete"] and restarts == []


def test_a_supernode_whose_port_was_taken_is_restarted_on_another(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    script = [("[Errno 98] address already in use\n", 1, []),
              (REPLIED, None, [{"event": "run-complete", "status": "finished"}])]
    _, restarts = _take_part(tmp_path, monkeypatch, script)
    assert restarts == [20002] and _FakeNode.started == [20001, 20002]


def test_a_site_whose_coordinator_went_away_starts_its_supernode_again_and_rejoins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink was killed: Flower's SuperNode gives up and exits; the site starts it again, which connects
    to the coordinator's new SuperLink (a resumed run) and takes part until the run finishes."""
    script = [("SuperNode ID: 1\n", 1, [{"event": "joined-run", "run_id": "41"}]),
              ("Giving up reconnection\n", 1, []),  # the coordinator is still away: tried again
              ("SuperNode ID: 2\n", None, [{"event": "joined-run", "run_id": "41"},
                                            {"event": "run-complete", "status": "finished"}])]
    seen, _ = _take_part(tmp_path, monkeypatch, script, reconnect_timeout=60.0)
    assert [e["event"] for e in seen] == ["joined-run", "joined-run", "run-complete"]
    assert len(_FakeNode.started) == 3


def test_a_coordinator_that_stays_away_ends_the_site_after_its_reconnect_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [("SuperNode ID: 1\n", 1, [])] + [("Giving up reconnection\n", 1, [])] * 5
    with pytest.raises(FedShieldError, match=r"did not take it back within 0.2 s \(--reconnect-timeout\)"):
        _take_part(tmp_path, monkeypatch, script, reconnect_timeout=0.2, reconnect_pause=0.1)
    assert len(_FakeNode.started) < 6


@pytest.mark.parametrize(("script", "kit", "message"), [
    ([("", None, [{"event": "refused", "message": "task not allowed here"}])], False, "^task not allowed here$"),
    ([(REPLIED, None, [{"event": "run-complete", "status": "failed"}])], False, "ended the run with status failed"),
    ([("Failed to activate SuperNode\n", 305, [])], True, "refused this site's key: hospital_a"),
    ([("Failed to activate SuperNode\n", 305, [])], False, r"SuperNode stopped \(exit 305\)"),
    ([("boom\n", 1, [])], False, r"SuperNode stopped \(exit 1\): boom"),
])
def test_taking_part_fails_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: list[Any],
                                           kit: bool, message: str) -> None:
    site_kit = SiteKit(tmp_path, "fed-id", "fed", "hospital_a", "127.0.0.1:9092") if kit else None
    if site_kit is not None:
        site_kit.node_key.write_bytes(b"key")  # the join holds the kit's lock on it
    with pytest.raises(FedShieldError, match=message):
        _take_part(tmp_path, monkeypatch, script, kit=site_kit)


def test_a_kit_is_used_by_one_live_process_and_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    """A second join with a kit on this host is refused at once; a killed holder frees the kit (kill -9 too)."""
    import signal
    import subprocess
    import sys

    from fedshield.client.kit_lock import kit_lock

    key = tmp_path / "node.key"
    key.write_bytes(b"key")
    key.chmod(0o400)  # read-only kits (a read-only volume) lock the same way
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(60)", str(key)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(FedShieldError, match=r"kit \(hospital_a\) is already connected .* another process"), \
                kit_lock(key, "hospital_a"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with kit_lock(key, "hospital_a"):
        pass
