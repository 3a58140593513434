"""Poisoning: what attacking sites cost the global model, with the coordinator's update checks and without.

Runs `fl-sim run` (the same apps as deployment) for digits-cnn over 10 sites with DP on, once clean and
once per (strategy, attack, number of attackers, checks), all on one seed, so every run sees the
same data, sampling and DP noise; the attackers are the first sites (``--attack KIND:SITES``). Prints
the final global model's accuracy on the central test set side by side with the clean run of the
same strategy, and the gap in points.

Checks: "on" is the default coordinator (finite, shaped updates with plausible counts, frozen layers
unchanged; norms clipped at 5x the round's median, refused above 100x it); "direction" adds
``--min-update-cosine 0`` (updates that point against the others' sit out the round, and sites that keep
doing so are refused: for similar sites); "auto" adds ``--min-update-cosine auto`` (only sites that also
stand out from the others' spread); "off" is ``--max-update-norm off``: what
the strategy alone withstands once malformed updates are gone. (Without any check, one NaN update made
the whole model NaN, median included: that is no longer a setting one can run.)

    python benchmarks/poisoning.py --attackers 1,3 --checks on,direction,off     # FedAvg, 1 and 3 attackers of 10
    python benchmarks/poisoning.py --strategies fedmedian,multikrum --checks on,direction
    python benchmarks/poisoning.py --attacks sign-flip --attackers 1,3 --checks auto --strategies fedavg,fedmedian
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
ATTACKS = ("nan", "scale", "sign-flip", "random")


def run_one(workdir: Path, name: str, args: argparse.Namespace, strategy: str, extra: list[str]) -> float:
    """Final central-test-set accuracy of one ``fl-sim run``."""
    run_dir = workdir / name
    cmd = [str(BIN / "fl-sim"), "run", "--task", "digits-cnn", "--clients", str(args.clients), "--rounds",
           str(args.rounds), "--local-epochs", str(args.local_epochs), "--epsilon", str(args.epsilon), "--seed",
           str(args.seed), "--strategy", strategy, "--tolerate-attackers", str(max(args.attackers_list)),
           "--no-plots", "--run-dir", str(run_dir), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{name}: run failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return float("nan")
    doc = json.loads((run_dir / "results.json").read_text())
    return float(doc["final"]["centralized"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/poisoning"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attackers", default="3", help="comma-separated counts of attacking sites")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--strategies", default="fedavg")
    parser.add_argument("--checks", default="on,off",
                        help="on: the default checks; direction: with --min-update-cosine 0; auto: with "
                             "--min-update-cosine auto; off: no norm bound")
    args = parser.parse_args()
    args.attackers_list = [int(a) for a in args.attackers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            clean = run_one(Path(tmp), f"{strategy}-clean", args, strategy, [])
            print(f"{strategy:<14} clean{'':<22} accuracy {clean:.4f}", flush=True)
            rows.append({"strategy": strategy, "attack": "none", "attackers": 0, "checks": "on", "accuracy": clean,
                         "gap_pt": 0.0})
            for attack in args.attacks.split(","):
                for count in args.attackers_list:
                    for checks in args.checks.split(","):
                        name = f"{strategy}-{attack}-{count}-{checks}"
                        off = {"on": [], "direction": ["--min-update-cosine", "0"],
                               "auto": ["--min-update-cosine", "auto"], "off": ["--max-update-norm", "off"]}[checks]
                        acc = run_one(Path(tmp), name, args, strategy, ["--attack", f"{attack}:{count}", *off])
                        gap = (acc - clean) * 100
                        rows.append({"strategy": strategy, "attack": attack, "attackers": count, "checks": checks,
                                     "accuracy": acc, "gap_pt": gap})
                        print(f"{strategy:<14} {attack:<10} {count} of {args.clients}  checks {checks:<9} accuracy "
                              f"{acc:.4f}  {gap:+6.1f} pt", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "poisoning.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\ndigits-cnn, {args.clients} sites, {args.rounds} rounds, {args.local_epochs} local epochs, "
          f"ε={args.epsilon:g}, seed {args.seed}")
    for checks in args.checks.split(","):
        attacked = [r for r in rows if r["attack"] != "none" and r["checks"] == checks]
        worst = min(attacked, key=lambda r: r["gap_pt"] if r["gap_pt"] == r["gap_pt"] else -1e9)
        print(f"worst gap with checks {checks}: {worst['gap_pt']:+.1f} pt ({worst['strategy']}, {worst['attack']}, "
              f"{worst['attackers']} attackers)")
    print(f"wrote {args.out / 'poisoning.csv'}")


if __name__ == "__main__":
    main()
