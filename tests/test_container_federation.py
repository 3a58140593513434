"""The container path, end to end: build FedShield's image, provision a federation with it, and run a
coordinator and three sites with `docker compose` (deploy/compose/compose.yaml) to the end of a SecAgg+ DP run.

The commands are deploy/README.md's ("Containers" and "Compose"). Where no image registry is reachable (CI
here) the base image is debootstrapped from the Debian mirror (deploy/docker/build-local-base.sh) and kept
as a tagged image, so a second run builds only FedShield's own layer. Containers talk over compose's own
bridge network on this machine; nothing is published beyond loopback.

Asserted: the run finishes and the global model learns; each site's ledger, on its bind mount, holds the ε
its site spent, written by the unprivileged container user; `docker compose down` and a new container lose
no ledger and no result; the image runs as uid 10001, health checks pass, and no key, token, pip
configuration or CA bundle of the build reached the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import digits_checkpoint_quality
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "fedshield:0.1.0"
LOCAL_BASE = "fedshield-local/python:3.11-bookworm"
SITES = ("hospital_a", "hospital_b", "hospital_c")
UID = 10001
ROUNDS = 2


def sh(*cmd: str, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True,
       cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command as deploy/README.md writes it; on failure, the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    if check:
        assert proc.returncode == 0, (f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                      f"{proc.stderr[-3000:]}")
    return proc


def compose_command() -> list[str]:
    """`docker compose` where the plugin exists, else the standalone `docker-compose` (Debian bookworm's)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "no docker compose: run deploy/ci/deploy-tools.sh"
    return ["docker-compose"]


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one that answers, or a dockerd started here (and stopped afterwards)."""
    assert shutil.which("dockerd") and shutil.which("docker"), "Docker is not installed: run deploy/ci/deploy-tools.sh"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        yield
        return
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as fh:
        daemon = subprocess.Popen(["dockerd"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(60):
            if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
                break
            assert daemon.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError(f"dockerd did not answer in 60 s: {log.read_text()[-3000:]}")
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture(scope="module")
def image(docker_engine: None) -> str:
    """FedShield's image, built on the locally debootstrapped base (the same Dockerfile as on python:3.11-slim)."""
    sh("deploy/docker/build-local-base.sh", LOCAL_BASE)
    sh("deploy/docker/build-image.sh", IMAGE, env={"BASE_IMAGE": LOCAL_BASE})
    return IMAGE


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# run in the image: files named like a secret, folders the build mounts, and files holding any marker in argv
SCAN = """
import os, sys
names = ('node.key', 'ca.key', 'server.key', 'control.token', 'pip.conf', 'pip-ca.crt', 'kit.toml')
markers = [m.encode() for m in sys.argv[1:]]
for folder, dirs, files in os.walk('/'):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in ('/proc', '/sys', '/dev')]
    for name in files:
        path = os.path.join(folder, name)
        if name in names or name.endswith('.key'):
            print(path)
        elif markers and os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) < 8_000_000:
            data = open(path, 'rb').read()
            if any(m in data for m in markers):
                print(path)
for path in ('/src', '/wheels', '/run/secrets'):
    if os.path.exists(path) and os.listdir(path):
        print(path)
"""


def pem_certificates(text: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S))


def host_pip_ca() -> str:
    """The CA bundle this host's pip is configured with (what build-image.sh passes as a build secret), or ''."""
    listed = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False).stdout
    paths = re.findall(r"^[^.]*\.cert='(.*)'$", listed, re.M)
    return Path(paths[0]).read_text() if paths else ""


def assert_unprivileged_without_secrets(image: str) -> None:
    """The image runs as uid 10001 with a health check, and no key, token, pip configuration, build secret or copy
    of the source is in its history or on its filesystem."""
    config = json.loads(sh("docker", "image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}" and config["Healthcheck"]["Test"][0] == "CMD"
    history = sh("docker", "history", "--no-trunc", image).stdout
    for secret in ("node.key", "ca.key", "server.key", "control.token", "pip-ca.crt BEGIN", "PRIVATE KEY"):
        assert secret not in history
    # the image's own filesystem: no key, token or pip configuration, no copy of the source, and none of the CA
    # certificates that only the host's pip bundle has (the build secret pip reached the index with)
    host_only = sorted(pem_certificates(host_pip_ca()) - pem_certificates(
        sh("docker", "run", "--rm", LOCAL_BASE, "cat", "/etc/ssl/certs/ca-certificates.crt").stdout))
    markers = [cert.splitlines()[1] for cert in host_only]  # each certificate's first base64 line
    found = sh("docker", "run", "--rm", "--user", "0", "--entrypoint", "/opt/fedshield/bin/python", image, "-c", SCAN,
               *markers).stdout
    assert found == "", found
    whoami = sh("docker", "run", "--rm", image, "python", "-c", "import os; print(os.getuid(), os.getgid())").stdout
    assert whoami.split() == [str(UID), str(UID)]


def test_compose_federation_runs_and_keeps_ledgers(image: str, digits_split: Path, tmp_path: Path) -> None:
    # one test, not two: under xdist two tests of this module could each build the image and start a dockerd
    assert_unprivileged_without_secrets(image)
    home = tmp_path / "fedshield"
    # deploy/README.md, "Compose": the folders, owned by the image's user
    for folder in ("federation", "runs", *(f"sites/{s}/{d}" for s in SITES for d in ("data", "state"))):
        (home / folder).mkdir(parents=True)
    for site in SITES:
        shutil.copytree(digits_split / site, home / "sites" / site / "data", dirs_exist_ok=True)
    sh("chown", "-R", f"{UID}:{UID}", str(home))
    sh("docker", "run", "--rm", "-v", f"{home}/federation:/srv/fedshield/federation", image,
       "fl-server", "init", "--dir", "/srv/fedshield/federation", "--server-name", "coordinator", "--port", "9092",
       "--sites", *SITES)
    node_key = home / "federation" / "kits" / "hospital_a" / "node.key"
    assert node_key.stat().st_uid == UID and node_key.stat().st_mode & 0o077 == 0

    compose = [*compose_command(), "-f", "deploy/compose/compose.yaml", "-p", f"fedshield-test-{os.getpid()}"]
    env = {"FEDSHIELD_HOME": str(home), "FEDSHIELD_IMAGE": image, "FEDSHIELD_ROUNDS": str(ROUNDS),
           "FEDSHIELD_PUBLISH": f"127.0.0.1:{free_port()}"}
    run_dir = home / "runs" / "run1"
    try:
        sh(*compose, "up", "-d", env=env)
        ids = {service: sh(*compose, "ps", "-q", service, env=env).stdout.strip()
               for service in ("coordinator", *SITES)}
        assert all(ids.values()), ids
        healthy: set[str] = set()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = {service: json.loads(sh("docker", "inspect", "-f", "{{json .State}}", cid).stdout)
                      for service, cid in ids.items()}
            healthy |= {s for s, st in states.items() if st.get("Health", {}).get("Status") == "healthy"}
            if all(not st["Running"] for st in states.values()):
                break
            time.sleep(2)
        logs = sh(*compose, "logs", "--no-color", env=env, check=False).stdout[-8000:]
        assert all(not st["Running"] for st in states.values()), f"still running after 600 s\n{logs}"
        assert {s: st["ExitCode"] for s, st in states.items()} == dict.fromkeys(ids, 0), logs
        # every container reported healthy while it ran (the coordinator's /health over TLS, the sites' SuperNode)
        assert healthy == set(ids), (healthy, logs)
        user = sh("docker", "inspect", "-f", "{{.Config.User}}", ids["coordinator"]).stdout.strip()
        assert user == f"{UID}:{UID}"
    finally:
        down = sh(*compose, "down", env=env, check=False)
    assert down.returncode == 0, down.stderr

    # the run: finished with every site, SecAgg+, DP at each site; the global model learned
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished" and set(doc["sites"]) == set(SITES) and doc["config"]["secagg"] is True
    assert (run_dir / "results.json").stat().st_uid == UID
    start, end = digits_checkpoint_quality(run_dir, 0), digits_checkpoint_quality(run_dir, ROUNDS)
    assert end["roc_auc"] >= start["roc_auc"] + 0.2 and end["loss"] <= start["loss"] - 0.15, (start, end)
    spent: dict[str, str] = {}
    for rnd in range(1, ROUNDS + 1):
        sites = doc["rounds"][rnd]["train"]["sites"]
        assert set(sites) == set(SITES) and all(s["dp"] for s in sites.values())
    for site in SITES:
        ledger = home / "sites" / site / "state" / "privacy-ledger.json"
        assert ledger.stat().st_uid == UID
        spent[site] = file_digest(ledger)

    # after `docker compose down`: results and ledgers are on the host, unchanged, and a new container reads them
    assert file_digest(run_dir / "results.json") and (run_dir / "checkpoints" / f"round-{ROUNDS:03d}.pt").is_file()
    for site in SITES:
        ledger = home / "sites" / site / "state" / "privacy-ledger.json"
        assert file_digest(ledger) == spent[site]
        shown = sh(*compose, "run", "--rm", "--no-deps", "-T", site, "fl-client", "privacy", "--data",
                   "/srv/fedshield/data", "--state-dir", "/srv/fedshield/state", "--json", env=env)
        book = json.loads(shown.stdout)
        assert 0 < book["epsilon_spent"] <= 8.0 + 1e-6, book
    sh(*compose, "down", env=env)
