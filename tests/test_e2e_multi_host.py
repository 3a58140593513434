"""Across hosts for real: a coordinator and three sites, each in its own network namespace with its own address.

The sites reach the coordinator only through a router namespace whose WAN relay (tests/wan_relay.py) delays
every chunk by 50 ms each way and loses 1 % of segments. The coordinator's firewall admits only the
federation port; the sites' firewalls admit nothing inbound, so the run also proves that a site needs no
open port. A site that dials the coordinator by a name its certificate does not list refuses it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_hosts import NetnsLab, missing_requirement
from wan_federation import PORT, STRANGE_NAME, WanFederation

from conftest import cli_env, digits_checkpoint_quality, stop_processes, wait_or_kill
from fedshield.client.privacy_ledger import PrivacyLedger
from fedshield.common.privacy_accounting import epsilon_of

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_requirement() is not None, reason=str(missing_requirement()))]

SITES = ("hospital_a", "hospital_b", "hospital_c")
ROUNDS = 2


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    made = NetnsLab("w")
    try:
        yield made
    finally:
        made.close()


def test_three_sites_train_across_a_wan_behind_firewalls(tmp_path: Path, digits_sites: Path, lab: NetnsLab) -> None:
    fed = WanFederation(lab, tmp_path, SITES, cli_env())
    fed.start_relay(delay_ms=50, loss=0.01)
    init = fed.provision()
    assert init.returncode == 0, init.stderr
    coordinator, sites = fed.coordinator, fed.hosts
    # the firewalls: a site reaches no other port of the coordinator, the coordinator no port of a site
    other_service, site_service = coordinator.listen(PORT + 1), sites[SITES[1]].listen(PORT)
    assert coordinator.can_dial(coordinator.address, PORT + 1) and not sites[SITES[1]].can_dial(coordinator.address,
                                                                                                  PORT + 1)
    assert sites[SITES[1]].can_dial(sites[SITES[1]].address, PORT) and not coordinator.can_dial(sites[SITES[1]].address,
                                                                                                  PORT)
    stop_processes(other_service, site_service)
    run_dir = tmp_path / "run"
    server = fed.start_server(run_dir, "--task", "digits-cnn", "--rounds", str(ROUNDS), "--min-clients", "3",
                              "--join-timeout", "300")
    # a site that dials the coordinator by a name the certificate does not list (it resolves to the
    # coordinator all the same) refuses it, in one line, and trains nothing
    stranger = fed.join(SITES[0], digits_sites / SITES[0], "--state-dir", str(tmp_path / "state-stranger"),
                        "--connect-timeout", "180", server=STRANGE_NAME, log=tmp_path / "stranger.out")
    joined: list[subprocess.Popen[bytes]] = [
        fed.join(name, digits_sites / name, "--epsilon", "8", "--threads", "1", "--state-dir",
                 str(tmp_path / f"state-{name}"), "--connect-timeout", "180") for name in SITES]
    try:
        assert wait_or_kill(stranger, 240) == 2, (tmp_path / "stranger.out").read_text()[-3000:]
        refusal = (tmp_path / "stranger.out").read_text().strip().splitlines()[-1]
        assert f"certificate is not valid for '{STRANGE_NAME}'" in refusal, refusal
        assert not (tmp_path / "state-stranger" / "privacy-ledger.json").exists()
        assert wait_or_kill(server, 420) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, proc in zip(SITES, joined, strict=True):
            assert wait_or_kill(proc, 120) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        stop_processes(server, stranger, *joined, *([fed.relay] if fed.relay else []))

    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and set(doc["sites"]) == set(SITES)
    rounds = {r["round"]: r for r in doc["rounds"]}
    assert sorted(rounds) == list(range(ROUNDS + 1))
    for rnd in range(1, ROUNDS + 1):
        assert set(rounds[rnd]["train"]["sites"]) == set(SITES) and rounds[rnd]["train"]["failures"] == []
    assert f"server listening on {coordinator.address}:{PORT}" in (tmp_path / "server.out").read_text()

    # every site's traffic crossed the WAN relay, and reached the coordinator through its one open port
    traffic = json.loads(fed.relay_stats.read_text())
    assert set(traffic) == {host.address for host in sites.values()}, traffic.keys()
    assert all(t["up"] > 100_000 and t["down"] > 100_000 for t in traffic.values())
    port_rule = next(line for line in fed.input_rules(coordinator).splitlines() if f"dpt:{PORT}" in line)
    assert int(port_rule.split()[0]) > 0, port_rule
    for host in sites.values():
        assert "policy DROP" in fed.input_rules(host) and "dpt:" not in fed.input_rules(host)

    # the model learned: the coordinator's checkpoints on all 1,797 of scikit-learn's digits (the sites'
    # replies are DP releases, see test_e2e_deployment.py)
    quality = {r: digits_checkpoint_quality(run_dir, r) for r in range(ROUNDS + 1)}
    best = max(range(1, ROUNDS + 1), key=lambda r: quality[r]["accuracy"])
    assert quality[best]["accuracy"] >= quality[0]["accuracy"] + 0.15, quality
    assert quality[ROUNDS]["roc_auc"] >= quality[0]["roc_auc"] + 0.15, quality

    # each site's ledger: one train entry per round it trained, and the ε it reported after each round is
    # the accountant's ε over its ledger up to that release
    run_id = None
    for name in SITES:
        ledger = PrivacyLedger.open(tmp_path / f"state-{name}", epsilon_budget=None, delta=None, accountant=None,
                                    data_dir=digits_sites / name)
        trains = [i for i, e in enumerate(ledger.entries) if e.kind == "train" and e.status == "released"]
        assert [ledger.entries[i].round for i in trains] == list(range(1, ROUNDS + 1))
        assert len({ledger.entries[i].run_id for i in trains}) == 1
        run_id = run_id or ledger.entries[trains[0]].run_id
        assert ledger.entries[trains[0]].run_id == run_id  # all three sites trained the same run
        for rnd, last in zip(range(1, ROUNDS + 1), trains, strict=True):
            history = [m for e in ledger.entries[:last + 1] for m in e.mechanisms()]
            reported = rounds[rnd]["train"]["sites"][name]["epsilon"]
            assert reported == pytest.approx(epsilon_of(history, ledger.delta, ledger.accountant), rel=1e-6)
        assert ledger.epsilon_spent() <= 8.0 + 1e-6
        assert ledger.epsilon_spent() == pytest.approx(rounds[ROUNDS]["evaluate"]["sites"][name]["epsilon"], rel=1e-6)
