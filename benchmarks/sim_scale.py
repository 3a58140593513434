"""Simulation at scale, side by side in one run: 10, 100 and 1,000 virtual sites; FedShield vs stock Flower.

1. FedShield ``fl-sim run`` (digits-cnn, DP-SGD ε = 8 per site, IID) with 10, 100 and 1,000 virtual
   sites and the same 10 sites per round. Every site holds the same ~143 examples (the pool grows
   with the number of sites through ``--augment``), so a round is the same work at every scale.
   Reports the steady round time (median of rounds 2..R, evaluate-to-evaluate) and the peak memory
   of the whole process tree (Ray's processes included), with ratios to 10 sites. Target ≤ 1.2×.
2. The same 100-site federation as a plain Flower simulation: a stock Message-API ClientApp doing the
   same local training (same CNN, batch 32, one epoch, SGD lr 0.05, no DP) on the same site folders
   and evaluation (10 sites + the central test set), with Flower's own FedAvg; against FedShield
   ``--no-dp`` and FedShield with DP. Target: FedShield without DP ≤ 1.15× stock.
3. The share of the sites' actor time spent in local training (``train-seconds`` the sites report)
   against everything else (evaluation, data loading, messaging, Ray, aggregation, checkpoints).

    python benchmarks/sim_scale.py        # ~6 minutes on 2 cores; run it on an idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_latency import TreeMemory, _env  # noqa: E402  (same process-tree memory probe)

BIN = Path(sys.executable).parent
PER_ROUND = 10
EXAMPLES_PER_SITE = 143  # digits: 1,437 real examples for sites (20 % are the central test set) / 10


def steady_round_s(results: Path) -> tuple[float, list[float]]:
    """Median evaluate-to-evaluate time of rounds 2..R, and all of them."""
    doc = json.loads(results.read_text())
    done = {r["round"]: r["finished_at"] for r in doc["rounds"] if "finished_at" in r}
    gaps = [done[r] - done[r - 1] for r in range(2, max(done) + 1)]
    return statistics.median(gaps), gaps


def training_share(results: Path, actors: int) -> float:
    """Σ sites' train-seconds over (round time × concurrent actors), rounds 2..R."""
    doc = json.loads(results.read_text())
    rounds = {r["round"]: r for r in doc["rounds"]}
    shares = []
    for rnd in range(2, max(rounds) + 1):
        wall = rounds[rnd]["finished_at"] - rounds[rnd - 1]["finished_at"]
        busy = sum(s["train-seconds"] for s in rounds[rnd]["train"]["sites"].values())
        shares.append(busy / (wall * actors))
    return statistics.median(shares)


def measured(cmd: list[str], name: str) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak GiB of its process tree). Exit with its output if it fails."""
    memory = TreeMemory()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory.roots.append(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out[-3000:]}")
    return wall, peak


def fedshield(work: Path, name: str, clients: int, rounds: int, *extra: str) -> dict[str, object]:
    run_dir = work / name
    cmd = [str(BIN / "fl-sim"), "run", "--task", "digits-cnn", "--clients", str(clients), "--per-round",
           str(PER_ROUND), "--rounds", str(rounds), "--iid", "--augment", str(max(1, clients // 10)),
           "--run-dir", str(run_dir), "--no-plots", "--model", "full", "--trusted-examples", "0", *extra]
    # the stock runs' network, with or without DP (under DP, --model auto would train digits-cnn's gabor
    # variant), and no trusted-example reference, which stock Flower has no counterpart of
    wall, peak = measured(cmd, name)
    median, gaps = steady_round_s(run_dir / "results.json")
    return {"name": name, "round_s": median, "rounds_s": gaps, "peak_gib": peak, "wall_s": wall,
            "train_share": training_share(run_dir / "results.json", os.cpu_count() or 1), "run_dir": str(run_dir)}


# ---------------------------------------------------------------- the stock Flower simulation
def stock(work: Path, data_dir: Path, clients: int, rounds: int) -> dict[str, object]:
    """Run the stock apps in a child process (fresh Ray), measuring its tree's memory."""
    out = work / "stock.json"
    cmd = [sys.executable, __file__, "--stock-worker", str(data_dir), "--clients", str(clients), "--rounds",
           str(rounds), "--stock-out", str(out)]
    wall, peak = measured(cmd, "stock Flower simulation")
    stamps = json.loads(out.read_text())["evaluated_at"]
    gaps = [stamps[r] - stamps[r - 1] for r in range(2, len(stamps))]
    return {"name": "stock Flower", "round_s": statistics.median(gaps), "rounds_s": gaps, "peak_gib": peak,
            "wall_s": wall, "train_share": float("nan")}


def stock_worker(data_dir: Path, clients: int, rounds: int, out: Path) -> None:
    """A plain Flower simulation, written as Flower's Message-API quickstarts write one: only Flower's exported
    API, none of FedShield's door (flower_ext), so it measures stock Flower."""
    import warnings

    import numpy as np
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.utils.data import DataLoader, TensorDataset

    from fedshield.tasks.digits_cnn import DigitsCNN  # the same network; everything around it is stock

    def load(folder: Path, split: bool):
        npz = np.load(folder / "data.npz")
        x = torch.as_tensor(npz["x"], dtype=torch.float32).unsqueeze(1) / 255.0
        y = torch.as_tensor(npz["y"], dtype=torch.long)
        if not split:
            return TensorDataset(x, y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(y))
        return TensorDataset(x[order[:cut]], y[order[:cut]]), TensorDataset(x[order[cut:]], y[order[cut:]])

    def evaluate(model: torch.nn.Module, data: TensorDataset) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            x, y = data.tensors
            logits = model(x)
            return float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        model = DigitsCNN()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        train_set, _ = load(data_dir / f"site_{int(context.node_config['partition-id']):04d}", True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        for x, y in DataLoader(train_set, batch_size=32, shuffle=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(train_set)})}), reply_to=msg)

    @client.evaluate()
    def evaluate_site(msg: Message, context: Context) -> Message:
        model = DigitsCNN()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        _, val = load(data_dir / f"site_{int(context.node_config['partition-id']):04d}", True)
        loss, acc = evaluate(model, val)
        return Message(RecordDict({"metrics": MetricRecord({"loss": loss, "accuracy": acc, "num-examples": len(val)})}),
                       reply_to=msg)

    server = ServerApp()
    stamps: list[float] = []
    test = load(data_dir / "test", False)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        fraction = PER_ROUND / clients
        strategy = FedAvg(fraction_train=fraction, fraction_evaluate=fraction, min_train_nodes=PER_ROUND,
                          min_evaluate_nodes=PER_ROUND, min_available_nodes=clients)
        central = DigitsCNN()

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            central.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(central, test)
            stamps.append(time.time())
            return MetricRecord({"loss": loss, "accuracy": acc})

        torch.manual_seed(0)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(DigitsCNN().state_dict()), num_rounds=rounds,
                       evaluate_fn=evaluate_fn)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0, "logging_level": "ERROR",
                             "log_to_driver": False, "include_dashboard": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=server, client_app=client, num_supernodes=clients, backend_config=backend)
    out.write_text(json.dumps({"evaluated_at": stamps}))


def materialize_all(run_dir: Path, clients: int) -> Path:
    """Write every site folder of a FedShield run's plan, so the stock app reads the very same data."""
    from fedshield.simulations.virtual_sites import materialize_site

    data = run_dir / "data"
    for site in range(clients):
        materialize_site(data, site)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scales", default="10,100,1000")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sim_scale.txt"))
    parser.add_argument("--stock-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stock-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stock_worker:
        stock_worker(args.stock_worker, args.clients, args.rounds, args.stock_out)
        return
    scales = [int(s) for s in args.scales.split(",")]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="sim-scale-") as tmp:
        work = Path(tmp)
        say(f"digits-cnn, IID, {PER_ROUND} sites per round, ~{EXAMPLES_PER_SITE} examples per site, "
            f"{args.rounds} rounds; steady round = median of rounds 2..{args.rounds}; {os.cpu_count()} CPUs")
        say()
        say("1. FedShield, DP-SGD ε = 8 per site, by number of virtual sites")
        say(f"{'sites':>6} {'round s':>9} {'× 10 sites':>11} {'peak GiB':>9} {'× 10 sites':>11} {'training share':>15}")
        scale_rows = []
        for n in scales:
            row = fedshield(work, f"dp-{n}", n, args.rounds, "--epsilon", "8")
            scale_rows.append((n, row))
            base = scale_rows[0][1]
            say(f"{n:>6} {row['round_s']:>9.2f} {row['round_s'] / base['round_s']:>10.2f}x {row['peak_gib']:>9.2f} "
                f"{row['peak_gib'] / base['peak_gib']:>10.2f}x {row['train_share']:>14.0%}")
        say()
        mid = 100 if 100 in scales else scales[0]
        dp_mid = dict(scale_rows)[mid]
        say(f"2. {mid} sites ({PER_ROUND} per round): FedShield against a stock Flower simulation of the same work")
        nodp = fedshield(work, f"nodp-{mid}", mid, args.rounds, "--no-dp")
        data_dir = materialize_all(Path(str(nodp["run_dir"])), mid)
        plain = stock(work, data_dir, mid, args.rounds)
        say(f"{'':<22} {'round s':>9} {'× stock':>9} {'peak GiB':>9} {'training share':>15}")
        for label, row in (("stock Flower, no DP", plain), ("FedShield, --no-dp", nodp), ("FedShield, DP ε=8", dp_mid)):
            share = "" if row["train_share"] != row["train_share"] else f"{row['train_share']:.0%}"
            say(f"{label:<22} {row['round_s']:>9.2f} {row['round_s'] / plain['round_s']:>8.2f}x "
                f"{row['peak_gib']:>9.2f} {share:>15}")
        say()
        say("training share: the sites' own train-seconds over (round time × CPUs); the rest of the actors' time is")
        say("evaluation, data loading, messaging, Ray scheduling, aggregation, checkpoints and results.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
