"""The dashboard in a real headless browser (Debian's chromium under Selenium) against real coordinators.

A 2-site TLS federation with ``fl-server start --dashboard``: the page lists the sites, its round counter and
accuracy chart advance while the run goes on without a reload, and it shows each site's ε against its budget.
A coordinator whose dashboard is bound to a non-loopback address, inside a network namespace this test
creates and removes, refuses the browser (and any request) without the federation's dashboard token.
Each test saves screenshots to ``test-artifacts/<test>/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from headless_chromium import chromium

from conftest import BIN, cli_env, run_cli, start_cli, stop_processes
from fedshield.common.net import free_port, wait_reachable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SITES = ("hospital_a", "hospital_b")
ROUNDS = 3
BUDGETS = {"hospital_a": "6", "hospital_b": "9"}  # each site's own --epsilon


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/<test name>/``, emptied: the test run's screenshots."""
    folder = ROOT / "test-artifacts" / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _wait_for(predicate, timeout: float, what: str):  # noqa: ANN001 - any callable returning a truthy value
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _rows(driver) -> dict[str, str]:  # noqa: ANN001 - a selenium WebDriver
    """The sites table: site -> state, as the page shows it."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#sites tbody tr')]"
        ".map((r) => [r.dataset.site, r.dataset.state]))")


def test_the_dashboard_follows_a_live_federation(tmp_path: Path, digits_sites: Path, artifacts: Path) -> None:
    port, page_port = free_port(), free_port()
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES).returncode == 0
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", str(ROUNDS),
                       "--min-clients", "2", "--run-dir", str(tmp_path / "run"), "--join-timeout", "300",
                       "--dashboard", f"127.0.0.1:{page_port}", log=tmp_path / "server.out")
    sites: list[subprocess.Popen[bytes]] = []
    driver = None
    try:
        assert wait_reachable("127.0.0.1", page_port, 120), (tmp_path / "server.out").read_text()[-3000:]
        driver = chromium(tmp_path / "profile")
        driver.get(f"http://127.0.0.1:{page_port}/")
        driver.execute_script("window.loadedOnce = 'yes'")  # gone if the page ever reloads
        # before any site joins, the page lists the enrolled sites
        assert _wait_for(lambda: _rows(driver) == dict.fromkeys(SITES, "enrolled"), 60, "the enrolled sites")
        driver.save_screenshot(str(artifacts / "1-waiting-for-sites.png"))
        sites = [start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data", str(digits_sites / name),
                           "--epsilon", BUDGETS[name], "--threads", "1", "--state-dir", str(tmp_path / f"state-{name}"),
                           "--connect-timeout", "120", log=tmp_path / f"{name}.out") for name in SITES]
        seen: list[tuple[int, int]] = []  # (round on the counter, points on the accuracy chart) while running
        states: set[str] = set()
        deadline = time.monotonic() + 420
        while server.poll() is None and time.monotonic() < deadline:
            # one script reads it all: the page cannot redraw between the counter and the chart
            status, counter, points, shown = driver.execute_script(
                "return [document.getElementById('status').textContent,"
                " document.getElementById('round-counter').dataset.round,"
                " document.getElementById('chart-global').getAttribute('data-points'),"
                " [...document.querySelectorAll('#sites tbody tr')].map((r) => r.dataset.state)]")
            if status == "running":
                seen.append((int(counter or 0), int(points or 0)))
                states |= set(shown)
                if seen[-1][0] == 2 and not (artifacts / "2-running.png").exists():
                    driver.save_screenshot(str(artifacts / "2-running.png"))
            time.sleep(0.25)
        assert server.wait(timeout=60) == 0, (tmp_path / "server.out").read_text()[-3000:]
        # the page went on showing the run as it went, in the same page load
        assert driver.execute_script("return window.loadedOnce") == "yes"
        rounds = sorted({r for r, _ in seen})
        assert len(rounds) >= 2 and rounds == sorted(rounds), seen
        points = [p for _, p in seen]
        assert points == sorted(points) and points[-1] > points[0], seen
        assert all(p == r + 1 for r, p in seen if r), seen  # one point per evaluated round, round 0 included
        assert "training" in states and set(SITES) == set(_rows(driver)), states
    finally:
        if driver is not None:
            driver.save_screenshot(str(artifacts / "3-last.png"))
        stop_processes(server, *sites)
        if driver is not None:
            driver.quit()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"
    assert f"dashboard: http://127.0.0.1:{page_port}/" in (tmp_path / "server.out").read_text()
    _finished_run_shows_epsilon_per_site(tmp_path, digits_sites, artifacts)


def _finished_run_shows_epsilon_per_site(tmp_path: Path, digits_sites: Path, artifacts: Path) -> None:
    """`fl-server dashboard --run-dir` on the finished run: each site's ε spent, as its ledger says, / its budget."""
    page_port = free_port()
    page = start_cli("fl-server", "dashboard", "--run-dir", str(tmp_path / "run"), "--listen", str(page_port),
                     log=tmp_path / "page.out")
    driver = None
    try:
        assert wait_reachable("127.0.0.1", page_port, 60), (tmp_path / "page.out").read_text()
        driver = chromium(tmp_path / "profile-finished")
        driver.get(f"http://127.0.0.1:{page_port}/")
        _wait_for(lambda: driver.execute_script("return document.getElementById('status').textContent") == "finished",
                  30, "the finished run")
        # a finished run does not change: the page keeps its rows (a redraw every second undid a reader's selection)
        driver.execute_script("document.querySelector('#sites tbody tr').dataset.mark = 'kept'")
        time.sleep(2.5)  # more than two polls
        assert driver.execute_script("return document.querySelector('#sites tbody tr').dataset.mark") == "kept"
        for name in SITES:
            ledger = run_cli("fl-client", "privacy", "--data", str(digits_sites / name), "--state-dir",
                             str(tmp_path / f"state-{name}"), "--json")
            spent = json.loads(ledger.stdout)["epsilon_spent"]
            shown = driver.execute_script(f"return document.getElementById('eps-{name}').textContent")
            assert shown == f"ε {spent:.2f} / {BUDGETS[name]}", (shown, spent)
        driver.save_screenshot(str(artifacts / "4-finished-run.png"))
    finally:
        if driver is not None:
            driver.quit()
        stop_processes(page)


# ------------------------------------------------------------------ beyond loopback, in a namespace of our own


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to create a network namespace and a veth pair (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install iproute2)"
    return None


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (name, this side's address, its address).

    The addresses are from 198.18.0.0/15 (RFC 2544: benchmarking, never routed); both go with the namespace.
    """
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    k = os.getpid() % 250 + 1
    name, outer, inner = f"fsdash{os.getpid()}", f"fsd{os.getpid()}o", f"fsd{os.getpid()}i"
    ours, theirs = f"198.18.{k}.1", f"198.18.{k}.2"
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
             ["ip", "link", "set", inner, "netns", name],
             ["ip", "addr", "add", f"{ours}/30", "dev", outer], ["ip", "link", "set", outer, "up"],
             ["ip", "-n", name, "addr", "add", f"{theirs}/30", "dev", inner],
             ["ip", "-n", name, "link", "set", inner, "up"], ["ip", "-n", name, "link", "set", "lo", "up"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield name, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _get(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a GET that does not follow redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_dashboard_beyond_loopback_refuses_requests_without_the_token(
        tmp_path: Path, namespace: tuple[str, str, str], artifacts: Path) -> None:
    netns, _, address = namespace
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", address, "--sites", *SITES).returncode == 0
    (fed / "server" / "dashboard.token").unlink()  # a federation made before dashboards: the token comes on first use
    page_port = free_port()
    with open(tmp_path / "server.out", "wb") as log:
        # the coordinator lives in the namespace: its SuperLink on the namespace's loopback, its page on the veth
        server = subprocess.Popen(["ip", "netns", "exec", netns, str(BIN / "fl-server"), "start", "--dir", str(fed),
                                   "--task", "digits-cnn", "--rounds", "1", "--min-clients", "2", "--run-dir",
                                   str(tmp_path / "run"), "--dashboard", f"{address}:{page_port}"],
                                  env=cli_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    driver = None
    try:
        assert wait_reachable(address, page_port, 120), (tmp_path / "server.out").read_text()[-3000:]
        token_file = fed / "server" / "dashboard.token"
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o077 == 0
        base = f"https://{address}:{page_port}"
        tls = ssl.create_default_context(cafile=str(fed / "server" / "ca.crt"))
        # no token, a wrong one: nothing but the login form
        assert _get(f"{base}/api/state", tls)[0] == 401
        assert _get(f"{base}/api/state", tls, {"Authorization": "Bearer not-the-token"})[0] == 401
        assert _get(f"{base}/", tls)[0] == 303
        status, body = _get(f"{base}/api/state", tls, {"Authorization": f"Bearer {token}"})
        assert status == 200 and {s["name"] for s in json.loads(body)["sites"]} == set(SITES)
        # the browser: trusts exactly this server's key (the federation's CA is not in its store)
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        cert = x509.load_pem_x509_certificate((fed / "server" / "server.crt").read_bytes())
        spki = base64.b64encode(hashlib.sha256(cert.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()).decode()
        driver = chromium(tmp_path / "profile", f"--ignore-certificate-errors-spki-list={spki}")
        driver.get(f"{base}/")
        assert driver.current_url == f"{base}/login"
        assert "Token required" in driver.page_source and "hospital_a" not in driver.page_source
        driver.save_screenshot(str(artifacts / "1-refused-without-token.png"))
        driver.find_element("id", "token").send_keys("not-the-token")
        driver.find_element("id", "login").click()
        # the form posts and the refusal comes back as a new page: wait for it rather than read the old one
        refusal = _wait_for(lambda: driver.execute_script(
            "const e = document.getElementById('login-error'); return e ? e.textContent : ''"), 30, "the refusal")
        assert "not this dashboard's token" in refusal
        driver.find_element("id", "token").send_keys(token)
        driver.find_element("id", "login").click()
        assert _wait_for(lambda: _rows(driver) == dict.fromkeys(SITES, "enrolled"), 30, "the sites after login")
        assert token not in driver.current_url
        (cookie,) = driver.get_cookies()
        assert cookie["httpOnly"] and cookie["secure"] and token not in cookie["value"]
        driver.save_screenshot(str(artifacts / "2-after-login.png"))
    finally:
        if driver is not None:
            driver.quit()
        stop_processes(server)
    out = (tmp_path / "server.out").read_text()
    assert f"wrote a dashboard token to {token_file}" in " ".join(out.split())
    assert f"dashboard: https://{address}:{page_port}/" in out
    assert token not in out and not re.search(r"token=", out)
