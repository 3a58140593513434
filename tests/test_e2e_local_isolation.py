"""A local user on the coordinator's or a site's host: no credential on any command line, no task from a local API.

A real `fl-server start --dir` (TLS, site authentication) and one `fl-client join --kit` on loopback; the
coordinator waits for a second site, so its ServerApp, SuperExec, the site's SuperNode and warm executor all
run. Then, as root, every command line of the run's processes is searched for the task tokens' shape, the
SuperExec auth secrets and the coordinator token; and as ``nobody`` (``runuser``, the system Python, a stdlib
script: tests/local_user_probe.py) the attacker reads those command lines as ``ps`` would, calls the
coordinator's Runtime API and the site's local API (``AcquireTask``, and ``GetNodes`` with any token it
found), and tries to read the secret files. On the old code the ServerApp ran as ``flwr-serverapp --token
<hex>`` and both APIs handed ``AcquireTask`` to anyone (HTTP 200). The federation then trains as usual.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import run_cli, start_cli, stop_processes
from fedshield.common.net import free_port

pytestmark = pytest.mark.slow
SITES = ("hospital_a", "hospital_b")
SYSTEM_PYTHON = "/usr/bin/python3"
SECRET_FLAG = "--superexec-auth-secret-file"
# a Flower task token: 128 random bytes as hex (flwr.common.constant.FLWR_TASK_TOKEN_LENGTH)
TASK_TOKEN = re.compile(rb"[0-9a-f]{256}")


def _nobody_can_run_python() -> str | None:
    """None when this test can act as ``nobody`` with a system Python, else why not."""
    if os.geteuid() != 0:
        return "needs root, to run the attacker as another user (runuser -u nobody)"
    if shutil.which("runuser") is None:
        return "needs runuser (util-linux) to act as an unprivileged local user"
    probe = subprocess.run(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", "pass"], capture_output=True,
                           timeout=30, check=False)
    return None if probe.returncode == 0 else f"nobody cannot run {SYSTEM_PYTHON}: {probe.stderr[-200:]!r}"


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text(errors='replace')[-3000:]}")


def _tree(*roots: subprocess.Popen[bytes]) -> list[psutil.Process]:
    procs = []
    for root in roots:
        parent = psutil.Process(root.pid)
        procs += [parent, *parent.children(recursive=True)]
    return procs


def _attack_as_nobody(pids: list[int]) -> dict:
    """Run tests/local_user_probe.py as ``nobody`` against ``pids``; its findings."""
    from flwr.supercore.constant import TASK_TOKEN_HEADER
    from flwr.supercore.runtime_version_compatibility import RuntimeVersionMetadata

    headers = dict(RuntimeVersionMetadata.from_local_component("SuperExec").as_metadata())  # public values
    folder = Path(tempfile.mkdtemp(prefix="fedshield-probe-"))
    try:
        folder.chmod(0o755)
        script = folder / "probe.py"
        shutil.copy(Path(__file__).with_name("local_user_probe.py"), script)
        script.chmod(0o644)
        proc = subprocess.run(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-I", str(script),
                               json.dumps({"pids": pids, "headers": headers, "token_header": TASK_TOKEN_HEADER})],
                              capture_output=True, text=True, timeout=120, check=False, cwd="/")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_local_user_reads_no_credential_and_gets_no_task(tmp_path: Path, digits_sites: Path) -> None:
    if (reason := _nobody_can_run_python()) is not None:
        pytest.skip(reason)
    port = free_port()
    fed = tmp_path / "federation"
    assert run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port", str(port),
                   "--sites", *SITES).returncode == 0
    shared = Path(tempfile.mkdtemp(prefix="fedshield-runs-"))  # a folder every local user may enter, like /srv
    shared.chmod(0o755)
    run_dir = shared / "run"
    server = start_cli("fl-server", "start", "--dir", str(fed), "--task", "digits-cnn", "--rounds", "1",
                       "--min-clients", "2", "--run-dir", str(run_dir), "--join-timeout", "600",
                       log=tmp_path / "server.out")

    def join(name: str) -> subprocess.Popen[bytes]:
        return start_cli("fl-client", "join", "--kit", str(fed / "kits" / name), "--data", str(digits_sites / name),
                         "--server", f"127.0.0.1:{port}", "--epsilon", "8", "--threads", "1",
                         "--state-dir", str(tmp_path / f"state-{name}"), "--connect-timeout", "120",
                         log=tmp_path / f"{name}.out")

    sites = [join(SITES[0])]
    try:
        _wait_for(tmp_path / "server.out", "sites connected: 1/2", server)  # the ServerApp runs, site a is in
        procs = _tree(server, sites[0])
        cmdlines = {p.pid: b"\0".join(a.encode() for a in p.cmdline()) for p in procs}
        joined = "\n".join(" ".join(p.cmdline()) for p in procs)
        assert "serverapp" in joined and "app_executor_main" in joined, joined  # the processes under attack run

        # (a) no credential on any command line of the run
        for pid, line in cmdlines.items():
            assert b"--token" not in line.split(b"\0") and not TASK_TOKEN.search(line), (pid, line)
        secret_files = sorted({Path(p.cmdline()[p.cmdline().index(SECRET_FLAG) + 1]) for p in procs
                               if SECRET_FLAG in p.cmdline()[:-1]})
        assert len(secret_files) == 2, joined  # the SuperLink's and the SuperNode's
        credentials = {f.name: f.read_bytes() for f in secret_files}
        credentials["control.token"] = (fed / "server" / "control.token").read_bytes().strip()
        for pid, line in cmdlines.items():
            for name, value in credentials.items():
                assert value not in line and value.hex().encode() not in line, (name, pid, line)
        for path in secret_files:  # 0600 in a 0700 folder of the run's user
            assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert path.stat().st_uid == os.geteuid()

        # (b) nobody, with what ps and the APIs give it, gets nothing
        found = _attack_as_nobody(sorted(cmdlines))
        assert any(found["cmdlines"].values()), found  # it did see the run's command lines
        assert found["tokens"] == [], found["tokens"]
        assert found["secret_files"] and set(found["secret_files"].values()) == {"PermissionError"}, found
        addresses = {answer["address"] for answer in found["answers"]}
        assert f"127.0.0.1:{port}" in addresses and len(addresses) >= 2, found["answers"]  # coordinator and site
        for answer in found["answers"]:
            assert answer["status"] in (401, 403), answer  # reached, and refused
            body = bytes.fromhex(answer["body"])
            assert not any(name.encode() in body for name in SITES), answer

        sites.append(join(SITES[1]))  # then the federation trains as usual
        assert server.wait(timeout=600) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for name, proc in zip(SITES, sites, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        stop_processes(server, *sites)
    try:
        assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"
        # (c) nor does it read the run's results or its model, though it may enter the folder above the run
        for name in ("results.json", "model-final.pt", "server.log"):
            read = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(run_dir / name)], capture_output=True,
                                  check=False)
            assert read.returncode != 0 and b"Permission denied" in read.stderr, (name, read.stderr)
    finally:
        shutil.rmtree(shared)
    assert all(not path.parent.exists() for path in secret_files)  # removed with the processes


