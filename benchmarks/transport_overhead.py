"""What TLS, site authentication and SecAgg+ cost per deployed round, side by side in one run, on loopback.

For each federation size (default 5 and 20 sites; digits-cnn, 454,922 parameters, IID split, no DP so
that local training stays small and the transport is what differs), three FedShield deployments:

1. ``--insecure``: plain HTTP, no site authentication (the baseline);
2. ``--dir``: TLS + site authentication + the control guard (``fl-server init`` federation);
3. ``--dir --secagg``: the same plus SecAgg+ (automatic share count: every site up to 7, then about
   2·log2(n)+1 neighbours, 11 at 20 sites; ChaCha20 masks).

Prints the steady round time (median round-to-round time of rounds 2..R) and its ratio to the
baseline of the same size. Every site runs its own SuperNode and warm executor with 1 torch thread.

    python benchmarks/transport_overhead.py               # ~10 minutes on 2 cores, ~12 GB RAM at 20 sites
    python benchmarks/transport_overhead.py --sites 5     # one size only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_latency import BIN, _env, _free_port, steady_round_s  # noqa: E402 - after the sys.path line above


def _run(data: Path, work: Path, sites: list[str], rounds: int, mode: str) -> float:
    port = _free_port()
    work.mkdir(parents=True, exist_ok=True)
    server_args = ["--insecure"]
    fed = work / "federation"
    if mode != "insecure":
        subprocess.run([str(BIN / "fl-server"), "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--port",
                        str(port), "--sites", *sites], check=True, env=_env(), capture_output=True)
        server_args = ["--dir", str(fed)] + (["--secagg"] if mode == "secagg" else [])
    procs: list[subprocess.Popen[bytes]] = []
    # every process's output beside the run, kept when one fails; closed however this ends
    with contextlib.ExitStack() as logs:
        try:
            server = subprocess.Popen(
                [str(BIN / "fl-server"), "start", *server_args, "--task", "digits-cnn", "--rounds", str(rounds),
                 "--min-clients", str(len(sites)), "--run-dir", str(work / "run"), "--port", str(port), "--no-dp"],
                env=_env(), stdout=logs.enter_context(open(work / "fl-server.log", "wb")), stderr=subprocess.STDOUT)
            procs.append(server)
            for site in sites:
                transport = ["--insecure"] if mode == "insecure" else ["--kit", str(fed / "kits" / site)]
                procs.append(subprocess.Popen(
                    [str(BIN / "fl-client"), "join", *transport, "--data", str(data / site), "--server",
                     f"127.0.0.1:{port}", "--threads", "1", "--no-dp", "--state-dir", str(work / f"st-{site}"),
                     "--connect-timeout", "300"], env=_env(),
                    stdout=logs.enter_context(open(work / f"site-{site}.log", "wb")), stderr=subprocess.STDOUT))
            if server.wait(timeout=3600) != 0:
                raise RuntimeError(f"{mode} run with {len(sites)} sites failed; see {work / 'fl-server.log'}, "
                                   f"{work / 'run' / 'server.log'} and {work / 'site-*.log'}")
            for proc in procs[1:]:
                proc.wait(timeout=120)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
    return steady_round_s(work / "run" / "results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="5,20", help="comma-separated federation sizes")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sites.split(",")]
    modes = {"insecure": "insecure (plain HTTP)", "tls": "TLS + site auth", "secagg": "TLS + site auth + SecAgg+"}
    rows: list[tuple[int, str, float, float]] = []
    # a failed federation's logs stay for reading; the folder goes only when every run succeeded
    root = Path(tempfile.mkdtemp(prefix="transport-overhead-"))
    for n in sizes:
        data = root / f"data-{n}"
        subprocess.run([str(BIN / "fl-sim"), "split", "--dataset", "digits", "--sites", str(n), "--iid",
                        "--out", str(data)], check=True, env=_env(), capture_output=True)
        sites = sorted(p.name for p in data.iterdir() if p.is_dir())
        base = None
        for mode, label in modes.items():
            t0 = time.monotonic()
            round_s = _run(data, root / f"{mode}-{n}", sites, args.rounds, mode)
            base = base or round_s
            rows.append((n, label, round_s, round_s / base))
            print(f"  ({label}, {n} sites: {time.monotonic() - t0:.0f} s wall)", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"digits-cnn (454,922 parameters), no DP, {args.rounds} rounds, loopback, {os.cpu_count()} cores")
    print(f"{'sites':>5}  {'setup':<28}{'round s':>9}{'x insecure':>12}")
    for n, label, round_s, ratio in rows:
        print(f"{n:>5}  {label:<28}{round_s:>9.2f}{ratio:>12.2f}")


if __name__ == "__main__":
    main()
