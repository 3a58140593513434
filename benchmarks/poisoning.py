"""Poisoning: what attacking sites cost the global model, with the coordinator's update checks and without.

Runs `fl-sim run` (the same apps as deployment) for digits-cnn over 10 sites with DP on, once clean and
once per (strategy, attack, number of attackers, checks), all on one seed, so every run sees the
same data, sampling and DP noise; the attackers are the first sites (``--attack KIND:SITES``). Prints
the final global model's accuracy on the central test set side by side with the clean run of the
same strategy, and the gap in points.

Checks: "on" is the default coordinator of ``fl-sim run``: finite, shaped updates with plausible counts, frozen
layers unchanged; norms clipped at 5x the round's median, refused above 100x it; and, since the simulated
coordinator holds the held-out examples, ``--trusted-examples auto`` (ten per class, 100 digits taken out of
the 360 held out): every update's direction is compared with the coordinator's own update on them, and
updates that point against it sit out or are refused. Its gaps are against a clean run with the same trusted
examples, whose central test set is 100 examples smaller. The other settings hold no trusted examples:
"no-reference" is the checks alone (the default of a deployed coordinator without ``--trusted-data``);
"direction" adds ``--min-update-cosine 0`` (each update against the other sites' median: for similar sites);
"auto" adds ``--min-update-cosine auto`` (only sites that also stand out from the others' spread); "off" is
``--max-update-norm off``: what the strategy alone withstands once malformed updates are gone. "trusted"
is ``--trusted-examples N`` (another count). (Without any check, one NaN update made the whole model NaN,
median included: that is no longer a setting one can run.)

NaN updates are refused by every setting, so a NaN run is what losing the attackers' data costs; every
other attack's row also says what it costs beyond that ("beyond NaN").

    python benchmarks/poisoning.py --attackers 1,3 --checks on,no-reference    # FedAvg, 1 and 3 attackers of 10
    python benchmarks/poisoning.py --attackers 1,3 --checks on --strategies fedavg,fedmedian --seed 1
    python benchmarks/poisoning.py --strategies fedmedian,multikrum --checks no-reference,direction
    python benchmarks/poisoning.py --attacks sign-flip --attackers 1,3 --checks auto --strategies fedavg,fedmedian
    python benchmarks/poisoning.py --attacks none --dirichlet 0.1 --seed 1 --checks on,no-reference,direction,auto

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


# each setting's extra flags; every one but "on" and "trusted" without the coordinator's trusted examples
CHECKS = {"on": [], "no-reference": ["--trusted-examples", "0"],
          "direction": ["--trusted-examples", "0", "--min-update-cosine", "0"],
          "auto": ["--trusted-examples", "0", "--min-update-cosine", "auto"],
          "off": ["--trusted-examples", "0", "--max-update-norm", "off"], "trusted": []}


def checks_flags(checks: str, args: argparse.Namespace) -> list[str]:
    """The ``fl-sim run`` flags of one checks setting (``trusted``: ``--trusted-examples N``)."""
    return ["--trusted-examples", str(args.trusted_examples)] if checks == "trusted" else CHECKS[checks]


def reference_of(checks: str, args: argparse.Namespace) -> str:
    """Which trusted examples the coordinator holds under ``checks`` ("auto", "0" or N): the clean run a setting
    is compared with holds the same ones (its central test set is that many examples smaller)."""
    if checks == "trusted":
        return str(args.trusted_examples)
    return "auto" if checks == "on" else "0"


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
    parser.add_argument("--trusted-examples", type=int, default=50, help="the coordinator's, for checks trusted")
    parser.add_argument("--strategies", default="fedavg")
    parser.add_argument("--checks", default="on,no-reference",
                        help="on: the default checks (fl-sim's --trusted-examples auto: 100 held-out digits); the "
                             "others without trusted examples: no-reference (the checks alone), direction "
                             "(--min-update-cosine 0), auto (--min-update-cosine auto), off (no norm bound); "
                             "trusted: --trusted-examples N (--trusted-examples)")
    args = parser.parse_args()
    args.attackers_list = [int(a) for a in args.attackers.split(",")]
    rows = []
    checks_list = args.checks.split(",")
    unknown = sorted(set(checks_list) - set(CHECKS))
    if unknown:
        parser.error(f"--checks {','.join(unknown)}: use {', '.join(CHECKS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            clean: dict[str, float] = {}  # per trusted-examples setting: their central test sets differ
            for reference in dict.fromkeys(reference_of(c, args) for c in checks_list):
                label = "clean" if reference == "0" else f"clean, trusted {reference}"
                clean[reference], held = run_one(Path(tmp), f"{strategy}-clean-{reference}", args, strategy,
                                                 ["--trusted-examples", reference])
                print(f"{strategy:<14} {label:<27} accuracy {clean[reference]:.4f}  honest held {held}", flush=True)
                rows.append({"strategy": strategy, "attack": "none", "attackers": 0, "checks": f"trusted {reference}",
                             "accuracy": clean[reference], "gap_pt": 0.0, "beyond_nan_pt": "", "honest_held": held})
            for attack in args.attacks.split(","):
                for count in [0] if attack == "none" else args.attackers_list:
                    for checks in checks_list:
                        if attack == "none" and checks in ("on", "trusted", "no-reference"):
                            continue  # the clean runs above
                        name = f"{strategy}-{attack}-{count}-{checks}"
                        extra = ["--attack", f"{attack}:{count}"] if attack != "none" else []
                        acc, held = run_one(Path(tmp), name, args, strategy, [*extra, *checks_flags(checks, args)],
                                            count)
                        gap = (acc - clean[reference_of(checks, args)]) * 100
                        # NaN updates are always refused: that run is what losing the attackers' data costs
                        dropped = next((r["accuracy"] for r in rows if r["strategy"] == strategy and
                                        r["attack"] == "nan" and r["attackers"] == count and r["checks"] == checks),
                                       None)
                        beyond = "" if dropped is None or attack == "nan" else round((acc - dropped) * 100, 1)
                        rows.append({"strategy": strategy, "attack": attack, "attackers": count, "checks": checks,
                                     "accuracy": acc, "gap_pt": gap, "beyond_nan_pt": beyond, "honest_held": held})
                        note = f"  ({beyond:+.1f} beyond NaN)" if beyond != "" else ""
                        print(f"{strategy:<14} {attack:<10} {count} of {args.clients}  checks {checks:<12} accuracy "
                              f"{acc:.4f}  {gap:+6.1f} pt{note}  honest held {held}", flush=True)
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
        beyond = [r for r in attacked if r["beyond_nan_pt"] != ""]
        if beyond:
            most = min(beyond, key=lambda r: r["beyond_nan_pt"])
            print(f"  beyond the attackers' lost data (the NaN run): {most['beyond_nan_pt']:+.1f} pt "
                  f"({most['strategy']}, {most['attack']}, {most['attackers']} attackers)")
    print(f"wrote {args.out / 'poisoning.csv'}")


if __name__ == "__main__":
    main()
