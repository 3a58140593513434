"""The multi-host harness cleans up: a lab's namespaces, the processes in them and those of dead test runs go."""

from __future__ import annotations

import subprocess

import pytest
from netns_hosts import PREFIX, NetnsLab, missing_requirement, sweep_stale

pytestmark = pytest.mark.skipif(missing_requirement() is not None, reason=str(missing_requirement()))


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def test_a_lab_routes_between_its_hosts_and_leaves_nothing_behind() -> None:
    lab = NetnsLab("t")
    try:
        a, b = lab.add_host("a"), lab.add_host("b")
        # a listener in a, reached from b through the router (it also stays running until close() ends it)
        listener = a.listen(8000)
        assert b.can_dial(a.address, 8000)
        assert {lab.router, a.netns, b.netns} <= _namespaces()
    finally:
        lab.close()
    assert listener.wait(timeout=15) is not None  # the process inside the namespace was ended
    assert not {lab.router, a.netns, b.netns} & _namespaces()


def test_the_namespaces_of_a_dead_test_process_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}zr"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in sweep_stale()
    assert stale not in _namespaces()
