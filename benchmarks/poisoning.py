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
stand out from the others' spread); "trusted" adds ``--trusted-examples N`` (the coordinator holds N of the
held-out examples and the direction test compares every update with its own update on them; its gaps are
against a clean run with the same trusted examples, whose central test set is N examples smaller); "off" is
``--max-update-norm off``: what
the strategy alone withstands once malformed updates are gone. (Without any check, one NaN update made
the whole model NaN, median included: that is no longer a setting one can run.)

    python benchmarks/poisoning.py --attackers 1,3 --checks on,direction,off     # FedAvg, 1 and 3 attackers of 10
    python benchmarks/poisoning.py --strategies fedmedian,multikrum --checks on,direction
    python benchmarks/poisoning.py --attacks sign-flip --attackers 1,3 --checks auto --strategies fedavg,fedmedian
    python benchmarks/poisoning.py --attackers 1,3 --checks trusted --strategies fedavg,fedmedian
    python benchmarks/poisoning.py --attacks none --dirichlet 0.1 --seed 1 --checks on,direction,auto,trusted

Attack ``none`` runs each checks setting without attackers: what a direction test costs honest sites whose
data differ (``--dirichlet``). Every row also counts the honest sites' updates the checks refused or held back.
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


CHECKS = {"on": [], "direction": ["--min-update-cosine", "0"], "auto": ["--min-update-cosine", "auto"],
          "off": ["--max-update-norm", "off"], "trusted": []}


def run_one(workdir: Path, name: str, args: argparse.Namespace, strategy: str, extra: list[str],
            attackers: int = 0) -> tuple[float, int]:
    """Final central-test-set accuracy of one ``fl-sim run``, and how many of the honest sites' updates (sites
    ``attackers`` and up) the checks refused or held back over the run."""
    run_dir = workdir / name
    partition = ["--dirichlet", str(args.dirichlet)] if args.dirichlet else []
    cmd = [str(BIN / "fl-sim"), "run", "--task", "digits-cnn", "--clients", str(args.clients), "--rounds",
           str(args.rounds), "--local-epochs", str(args.local_epochs), "--epsilon", str(args.epsilon), "--seed",
           str(args.seed), "--strategy", strategy, "--tolerate-attackers", str(max(args.attackers_list)),
           "--no-plots", "--run-dir", str(run_dir), *partition, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{name}: run failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return float("nan"), 0
    doc = json.loads((run_dir / "results.json").read_text())
    held = sum(1 for entry in doc["rounds"] for failure in (entry.get("train") or {}).get("failures", [])
               if int(failure["site"].rsplit("_", 1)[-1]) >= attackers)
    return float(doc["final"]["centralized"]["accuracy"]), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/poisoning"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attackers", default="3", help="comma-separated counts of attacking sites")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"{', '.join(ATTACKS)} or none")
    parser.add_argument("--dirichlet", type=float, default=0.0, help="label skew of the sites (0: IID)")
    parser.add_argument("--trusted-examples", type=int, default=100, help="the coordinator's, for checks trusted")
    parser.add_argument("--strategies", default="fedavg")
    parser.add_argument("--checks", default="on,off",
                        help="on: the default checks; direction: with --min-update-cosine 0; auto: with "
                             "--min-update-cosine auto; trusted: with --trusted-examples; off: no norm bound")
    args = parser.parse_args()
    args.attackers_list = [int(a) for a in args.attackers.split(",")]
    rows = []
    checks_list = args.checks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            clean: dict[bool, float] = {}  # with trusted examples or not: their central test sets differ
            for trusted in sorted({c == "trusted" for c in checks_list}):
                extra = ["--trusted-examples", str(args.trusted_examples)] if trusted else []
                clean[trusted], held = run_one(Path(tmp), f"{strategy}-clean-{trusted}", args, strategy, extra)
                label = "clean, trusted" if trusted else "clean"
                print(f"{strategy:<14} {label:<27} accuracy {clean[trusted]:.4f}  honest held {held}", flush=True)
                rows.append({"strategy": strategy, "attack": "none", "attackers": 0,
                             "checks": "trusted" if trusted else "on", "accuracy": clean[trusted], "gap_pt": 0.0,
                             "honest_held": held})
            for attack in args.attacks.split(","):
                for count in [0] if attack == "none" else args.attackers_list:
                    for checks in checks_list:
                        if attack == "none" and checks in ("on", "trusted"):
                            continue  # the clean runs above
                        name = f"{strategy}-{attack}-{count}-{checks}"
                        extra = ["--trusted-examples", str(args.trusted_examples)] if checks == "trusted" else []
                        if attack != "none":
                            extra += ["--attack", f"{attack}:{count}"]
                        acc, held = run_one(Path(tmp), name, args, strategy, [*extra, *CHECKS[checks]], count)
                        gap = (acc - clean[checks == "trusted"]) * 100
                        rows.append({"strategy": strategy, "attack": attack, "attackers": count, "checks": checks,
                                     "accuracy": acc, "gap_pt": gap, "honest_held": held})
                        print(f"{strategy:<14} {attack:<10} {count} of {args.clients}  checks {checks:<9} accuracy "
                              f"{acc:.4f}  {gap:+6.1f} pt  honest held {held}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "poisoning.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    skew = f"Dirichlet {args.dirichlet:g}" if args.dirichlet else "IID"
    print(f"\ndigits-cnn, {args.clients} sites ({skew}), {args.rounds} rounds, {args.local_epochs} local epochs, "
          f"ε={args.epsilon:g}, seed {args.seed}")
    for checks in checks_list:
        attacked = [r for r in rows if r["attack"] != "none" and r["checks"] == checks]
        if not attacked:
            continue
        worst = min(attacked, key=lambda r: r["gap_pt"] if r["gap_pt"] == r["gap_pt"] else -1e9)
        print(f"worst gap with checks {checks}: {worst['gap_pt']:+.1f} pt ({worst['strategy']}, {worst['attack']}, "
              f"{worst['attackers']} attackers)")
    print(f"wrote {args.out / 'poisoning.csv'}")


if __name__ == "__main__":
    main()
