"""The dashboard's state, its access rules and its packaging, in-process (the browser test is
tests/test_e2e_dashboard.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import run_cli
from fedshield.common.errors import ConfigError
from fedshield.server.dashboard.access import SESSION_COOKIE, ensure_token, read_token
from fedshield.server.dashboard.address import is_loopback, parse_listen
from fedshield.server.dashboard.app import STATIC, RunSource, build_app
from fedshield.server.dashboard.run_view import dashboard_state

TOKEN = "t" * 43


def _doc() -> dict:
    """A results.json of a run in its third round: round 2 lost hospital_b's update, round 3 is training."""
    site = {"examples-train": 400, "examples-val": 100, "epsilon-budget": 8.0}
    return {
        "status": "running", "mode": "deployment", "task": "digits-cnn",
        "config": {"rounds": 5, "secagg": True, "min-clients": 2},
        "privacy": {"sample_level_dp": True},
        "schema": {"schema-kind": "classification"},
        "sites": {"hospital_a": site, "hospital_b": site},
        "refused_sites": {"mallory": "claims to be hospital_a"},
        "in_flight": {"round": 3, "stage": "train", "sites": ["hospital_a"], "since": 130.0},
        "rounds": [
            {"round": 0, "evaluate": {"sites": {"hospital_a": {"loss": 2.3, "accuracy": 0.1, "epsilon": 0.2}},
                                      "failures": [], "aggregate": {"loss": 2.3, "accuracy": 0.1}},
             "finished_at": 100.0},
            {"round": 1, "train": {"sites": {"hospital_a": {"epsilon": 1.5}, "hospital_b": {"epsilon": 1.4}},
                                   "failures": [], "loss": 2.0},
             "secagg_stages_s": {"setup": 0.1, "share keys": 0.2},
             "evaluate": {"sites": {"hospital_a": {"loss": 1.9, "accuracy": 0.4, "epsilon": 1.7},
                                    "hospital_b": {"loss": 2.0, "accuracy": 0.3, "epsilon": 1.6}},
                          "failures": [], "aggregate": {"loss": 1.95, "accuracy": 0.35}},
             "finished_at": 112.5},
            {"round": 2, "train": {"sites": {"hospital_a": {"epsilon": 2.5}},
                                   "failures": [{"site": "hospital_b", "reason": "update has NaN values"}]},
             "evaluate": {"sites": {"hospital_a": {"loss": 1.5, "accuracy": 0.6, "epsilon": 2.7}},
                          "failures": [], "aggregate": {"loss": 1.5, "accuracy": 0.6}},
             "finished_at": 122.5},
        ],
    }


def test_the_state_names_every_site_state_and_the_figures_of_every_round() -> None:
    state = dashboard_state(_doc(), {"hospital_a": "enrolled", "hospital_b": "enrolled", "hospital_c": "enrolled",
                                     "old_site": "revoked"})
    sites = {s["name"]: s for s in state["sites"]}
    assert {n: s["state"] for n, s in sites.items()} == {
        "hospital_a": "training", "hospital_b": "dropped", "hospital_c": "enrolled", "mallory": "refused",
        "old_site": "revoked"}
    assert sites["hospital_b"]["reason"] == "update has NaN values"
    assert sites["mallory"]["reason"] == "claims to be hospital_a"
    assert (sites["hospital_a"]["epsilon"], sites["hospital_a"]["budget"]) == (2.7, 8.0)
    assert sites["hospital_b"]["epsilon"] == 1.6  # its last release
    assert state["run"]["round"] == 2 and state["run"]["rounds_total"] == 5 and state["run"]["headline"] == "accuracy"
    assert [r["seconds"] for r in state["rounds"]] == [None, 12.5, 10.0]
    assert [r["metrics"]["accuracy"] for r in state["rounds"]] == [0.1, 0.35, 0.6]
    assert state["rounds"][1]["sites"]["hospital_b"]["accuracy"] == 0.3
    assert state["rounds"][1]["secagg_stages_s"] == {"setup": 0.1, "share keys": 0.2}
    assert state["failures"] == [{"round": 2, "stage": "train", "site": "hospital_b",
                                  "reason": "update has NaN values"}]
    json.dumps(state)  # all of it is JSON


def test_a_run_not_written_yet_and_a_finished_run_show_no_stage_in_flight() -> None:
    assert dashboard_state(None)["run"]["status"] == "starting"
    finished = {**_doc(), "status": "finished"}
    assert dashboard_state(finished)["run"]["in_flight"] is None
    assert {s["state"] for s in dashboard_state(finished)["sites"]} == {"connected", "dropped", "refused"}


@pytest.mark.parametrize(("value", "expected"), [("8050", ("127.0.0.1", 8050)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                                 ("[::1]:8050", ("::1", 8050)), ("fl.example.org:8443",
                                                                                  ("fl.example.org", 8443))])
def test_listen_addresses_parse(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value, flag="--dashboard") == expected


@pytest.mark.parametrize("value", ["", "host:", "1.2.3.4:99999", "abc"])
def test_a_bad_listen_address_names_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--dashboard"):
        parse_listen(value, flag="--dashboard")


def test_only_loopback_addresses_count_as_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "192.0.2.2", "fl.example.org"]))


def _client(tmp_path: Path, bound_host: str, token: str | None) -> TestClient:
    (tmp_path / "results.json").write_text(json.dumps(_doc()))
    app = build_app(RunSource(tmp_path), bound_host=bound_host, token=token, secure_cookie=True)
    return TestClient(app, base_url="https://198.18.0.2:8050" if token else "http://127.0.0.1:8050",
                      follow_redirects=False)


def test_a_loopback_page_needs_no_token_but_refuses_a_foreign_host_name(tmp_path: Path) -> None:
    client = _client(tmp_path, "127.0.0.1", None)
    assert client.get("/api/state").json()["run"]["round"] == 2
    page = client.get("/")
    assert page.status_code == 200 and "/static/dashboard.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # a page of evil.example that rebinds its name to 127.0.0.1 reads nothing
    assert client.get("/api/state", headers={"host": "evil.example:8050"}).status_code == 403
    assert client.get("/api/state", headers={"host": "[::1]:8050"}).status_code == 200


def test_a_page_beyond_loopback_refuses_requests_without_the_token(tmp_path: Path) -> None:
    client = _client(tmp_path, "198.18.0.2", TOKEN)
    assert client.get("/api/state").status_code == 401
    assert client.get("/api/state", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/").headers["location"] == "/login"
    assert client.get("/login").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200  # the package's own public files
    assert client.get("/api/state", headers={"authorization": f"Bearer {TOKEN}"}).json()["run"]["round"] == 2
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    login = client.post("/login", data={"token": TOKEN})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert client.get("/api/state").status_code == 200  # the session cookie is enough now
    forged = _client(tmp_path, "198.18.0.2", TOKEN)
    forged.cookies.set(SESSION_COOKIE, TOKEN)
    assert forged.get("/api/state").status_code == 401


def test_a_page_beyond_loopback_without_a_token_is_never_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        build_app(RunSource(tmp_path), bound_host="0.0.0.0", token=None, secure_cookie=False)


def test_the_token_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    assert ensure_token(path) and not ensure_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(read_token(path)) >= 32
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(path)


def test_the_page_ships_everything_it_loads() -> None:
    import re

    html = (STATIC / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert loaded and all(ref.startswith("/static/") and (STATIC / ref[len("/static/"):]).is_file() for ref in loaded)
    for path in STATIC.iterdir():
        assert "http://" not in path.read_text().replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in path.read_text(), path
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"fedshield.server.dashboard.static" = ["*.html", "*.js", "*.css"]' in pyproject
    assert {p.suffix for p in STATIC.iterdir()} == {".html", ".js", ".css"}


def test_init_writes_a_private_dashboard_token(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--sites", "a").returncode == 0
    token = fed / "server" / "dashboard.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text().strip() != (fed / "server" / "control.token").read_text().strip()


def test_a_dashboard_beyond_loopback_without_a_federation_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    proc = run_cli("fl-server", "dashboard", "--run-dir", str(tmp_path / "run"), "--listen", "0.0.0.0:8050")
    assert proc.returncode == 2 and "--listen 0.0.0.0:8050" in proc.stderr and "--dir" in proc.stderr
    proc = run_cli("fl-server", "dashboard", "--run-dir", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "--run-dir" in proc.stderr
