"""Two sites train digits-cnn under DP-SGD on the device, in a real federation on loopback (gpu_check.py, part 3).

``fl-server start --insecure`` and two ``fl-client join --device D`` as OS processes (``python -m`` their
modules, so a source checkout without an install runs them too: benchmarks/source_tree.py), on site
folders that ``fl-sim split`` writes from scikit-learn's digits. Reports each round's wall time (the
server's results.json) and the device each site said it trained on (its ``round N: training ...`` line).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SITES = ("hospital_a", "hospital_b")
TRAINED_ON = re.compile(r"round (\d+): training on \d+ examples with DP-SGD \((\w+)")


def _scripts_path() -> str:
    """PATH with the folder of Flower's console scripts (``flwr``, which ``fl-server start`` runs) first when
    they are not beside the interpreter: ``pip install --target DIR`` puts them in ``DIR/bin`` (DIR on
    ``sys.path``)."""
    path = os.environ.get("PATH", "")
    if (Path(sys.executable).parent / "flwr").exists() or shutil.which("flwr"):
        return path
    found = [str(Path(entry) / "bin") for entry in sys.path if entry and (Path(entry) / "bin" / "flwr").is_file()]
    return os.pathsep.join([*found[:1], path])


def _env() -> dict[str, str]:
    """No phone-home, unbuffered output, wide lines (one event a line), Flower's ``flwr`` on PATH."""
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200", "PATH": _scripts_path()}


def _start(module: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_env())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the CLIs stop their Flower children on it), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def federate(work: Path, device: str, rounds: int = 2, timeout: float = 240.0) -> dict[str, object]:
    """Run the federation in ``work``; its status, round times (s) and each site's device per round."""
    from fedshield.common.net import free_port

    data, run_dir = work / "data", work / "run"
    split = subprocess.run([sys.executable, "-m", "fedshield.simulations.cli", "split", "--dataset", "digits",
                            "--sites", str(len(SITES)), "--out", str(data)], capture_output=True, text=True,
                           env=_env(), timeout=120)
    if split.returncode != 0:
        return {"status": "split failed", "error": split.stderr[-2000:]}
    port = free_port()
    started = time.perf_counter()
    server = _start("fedshield.server.cli", ["start", "--task", "digits-cnn", "--rounds", str(rounds), "--min-clients",
                                             str(len(SITES)), "--run-dir", str(run_dir), "--insecure", "--port",
                                             str(port), "--join-timeout", "120"], work / "server.out")
    sites = [_start("fedshield.client.cli", ["join", "--data", str(data / name), "--server", f"127.0.0.1:{port}",
                                             "--insecure", "--epsilon", "8", "--device", device, "--threads", "1",
                                             "--state-dir", str(work / f"state-{name}"), "--connect-timeout", "120"],
                    work / f"{name}.out") for name in SITES]
    try:
        if server.wait(timeout=timeout) == 0:  # a failed server leaves the sites waiting for it: stop them
            for proc in sites:
                proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in (server, *sites):
            _stop(proc)
    total = time.perf_counter() - started
    results = run_dir / "results.json"
    doc = json.loads(results.read_text()) if results.is_file() else {}
    trained = {name: {int(r): d for r, d in TRAINED_ON.findall((work / f"{name}.out").read_text(errors="replace"))}
               for name in SITES}
    done = [r for r in doc.get("rounds", []) if r.get("round", 0) >= 1 and "finished_at" in r]
    report: dict[str, object] = {
        "status": doc.get("status", "no results.json"), "server_exit": server.returncode,
        "site_exits": [p.returncode for p in sites], "rounds_finished": len(done),
        "round_seconds": [r["finished_at"] - r["started_at"] for r in done], "total_seconds": total,
        "trained_on": trained,
    }
    if report["status"] != "finished":
        report["server_log_tail"] = (work / "server.out").read_text(errors="replace")[-2000:]
    return report
