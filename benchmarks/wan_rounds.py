"""Round time and traffic of a federation across a WAN: 3 sites and a coordinator in network namespaces.

The job of ``deploy_latency.py`` (digits-cnn, 3 sites, Dirichlet 0.5, DP-SGD ε = 8 per site, TLS and site
authentication, the sites' firewalls closed to inbound traffic), run with the sites' connections to the
coordinator carried by the test harness's WAN relay (tests/wan_relay.py: a one-way delay per direction,
per-segment loss as a retransmission timeout late) at 0, 20, 50 and 100 ms, and 1 % loss at 50 ms.

Per setting: the steady round time (median of rounds 2..R, evaluate to evaluate), and per site and round
the bytes up and down and the request/reply exchanges the relay carried (median of rounds 2..R, mean of
the sites). Needs root, ``ip`` and ``iptables`` (as the multi-host test).

    sudo .venv/bin/python benchmarks/wan_rounds.py          # ~15 minutes on 2 cores; on an idle machine
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the namespace and relay harness lives with the tests: never shipped

from deploy_latency import _env, steady_round_s  # noqa: E402 - benchmarks/ is this script's folder
from netns_hosts import NetnsLab, missing_requirement  # noqa: E402
from wan_federation import BIN, WanFederation  # noqa: E402

SITES = ("hospital_a", "hospital_b", "hospital_c")


def _at(series: list[list[float]], when: float) -> list[float]:
    """A relay series' cumulative [up, down, exchanges, connections] at time ``when`` (the last sample before)."""
    i = bisect.bisect_right([s[0] for s in series], when) - 1
    return series[i][1:] if i >= 0 else [0.0, 0.0, 0.0, 0.0]


def per_round_traffic(results: Path, relay_stats: Path) -> dict[str, float]:
    """Median over rounds 2..R of bytes up/down, exchanges and new connections per site between consecutive
    round ends, and each round's time."""
    doc = json.loads(results.read_text())
    done = {r["round"]: r["finished_at"] for r in doc["rounds"] if "finished_at" in r}
    traffic = json.loads(relay_stats.read_text())
    out: dict[str, list[float]] = {"up_kb": [], "down_kb": [], "exchanges": [], "connections": []}
    for site in traffic.values():
        rows = [[b - a for a, b in zip(_at(site["series"], done[r - 1]), _at(site["series"], done[r]), strict=True)]
                for r in range(2, max(done) + 1)]
        for key, column in zip(out, zip(*rows, strict=True), strict=True):
            out[key].append(statistics.median(column))
    return {"up_kb_per_round": statistics.mean(out["up_kb"]) / 1000,
            "down_kb_per_round": statistics.mean(out["down_kb"]) / 1000,
            "exchanges_per_round": statistics.mean(out["exchanges"]),
            "connections_per_round": statistics.mean(out["connections"]),
            "rounds_s": [round(done[r] - done[r - 1], 2) for r in range(2, max(done) + 1)]}


def run_setting(data: Path, work: Path, tag: str, delay_ms: float, loss: float, rounds: int) -> dict[str, float]:
    lab = NetnsLab(tag)
    try:
        fed = WanFederation(lab, work, SITES, _env())
        fed.start_relay(delay_ms=delay_ms, loss=loss)
        assert fed.provision().returncode == 0
        run_dir = work / "run"
        t0 = time.time()
        server = fed.start_server(run_dir, "--task", "digits-cnn", "--rounds", str(rounds), "--min-clients", "3",
                                  "--join-timeout", "600")
        sites = [fed.join(name, data / name, "--epsilon", "8", "--threads", "1", "--state-dir",
                          str(work / f"state-{name}"), "--connect-timeout", "300") for name in SITES]
        assert server.wait(timeout=1800) == 0, (work / "server.out").read_text()[-3000:]
        for proc in sites:
            proc.wait(timeout=120)
        if fed.relay is not None:
            fed.relay.terminate()
            fed.relay.wait(timeout=30)
        results = run_dir / "results.json"
        doc = json.loads(results.read_text())
        return {"delay_ms": delay_ms, "loss": loss, "round_s": steady_round_s(results),
                "startup_s": doc["rounds"][0]["finished_at"] - t0, **per_round_traffic(results, fed.relay_stats)}
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--settings", default="0,20,50,100,50:0.01",
                        help="one-way delays in ms, each with :LOSS for a loss rate (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "wan_rounds")
    args = parser.parse_args()
    problem = missing_requirement()
    if problem:
        sys.exit(f"error: {problem}")
    with tempfile.TemporaryDirectory(prefix="wan-rounds-") as tmp:
        data = Path(tmp) / "data"
        split = subprocess.run([str(BIN / "fl-sim"), "split", "--dataset", "digits", "--sites", "3", "--dirichlet",
                                "0.5", "--out", str(data)], env=_env(), capture_output=True, text=True, check=False)
        assert split.returncode == 0, split.stderr
        rows = []
        settings = [(float(d), float(loss or 0)) for d, _, loss in (s.partition(":") for s in args.settings.split(","))]
        for i, (delay_ms, loss) in enumerate(settings):
            work = Path(tmp) / f"setting-{i}"
            work.mkdir()
            subprocess.run(["cp", "-r", str(data), str(work / "data")], check=True)  # a fresh ledger per setting
            rows.append(run_setting(work / "data", work, chr(ord("a") + i), delay_ms, loss, args.rounds))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["round_s"]
    header = (f"{'one-way delay':>14}{'loss':>7}{'round s':>9}{'+ vs 0 ms':>11}{'exchanges':>11}{'up kB':>9}"
              f"{'down kB':>9}{'conns':>7}{'start-up s':>12}  rounds 2-R s")
    lines = [header] + [
        f"{row['delay_ms']:>11.0f} ms{row['loss'] * 100:>6.0f}%{row['round_s']:>9.2f}{row['round_s'] - base:>+11.2f}"
        f"{row['exchanges_per_round']:>11.1f}{row['up_kb_per_round']:>9.0f}{row['down_kb_per_round']:>9.0f}"
        f"{row['connections_per_round']:>7.1f}{row['startup_s']:>12.1f}  {row['rounds_s']}" for row in rows]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(
        "# WAN rounds (`python benchmarks/wan_rounds.py`)\n\ndigits-cnn, 3 sites, DP ε = 8, TLS, per site and "
        f"round (median of rounds 2-{args.rounds}): exchanges, kB up/down and new connections per site\n\n"
        f"```\n{table}\n```\n")


if __name__ == "__main__":
    main()
