"""Cartesian sweeps of simulated federations: ε × label skew × sites per round × strategy × seed.

Each cell is one ``fl-sim run`` (a child process, so a crash or Ctrl-C costs one cell, and Ray starts
clean) in ``<sweep>/cells/<key>``, without its own plots (``fl-sim report <sweep>/cells/<key>`` draws
them). A cell whose ``results.json`` says ``finished`` is never run again,
so an interrupted sweep resumes where it stopped. After every cell the table of all finished cells is
rewritten (``sweep.csv`` and ``sweep-results.json``, atomically); ``report_sweep`` draws the
privacy–utility curve (mean ± std over seeds) and writes ``summary.md``. With ``--track``, each cell run here
is logged as one tracked run named by its key (:func:`track_cell`).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_json, atomic_write_text, read_json
from fedshield.common.errors import ConfigError, FedShieldError, RunFolderError
from fedshield.common.results_view import headline_metric_name
from fedshield.common.run_tracking import track_finished_run
from fedshield.common.track_spec import TrackSpec
from fedshield.simulations.report import final_central, report_run

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "fedshield-sweep"
CELLS_DIR = "cells"
CSV_FILE = "sweep.csv"
JSON_FILE = "sweep-results.json"
CSV_FIELDS = ("key", "status", "epsilon", "partition", "per_round", "strategy", "seed", "metric", "central",
              "federated", "initial_federated", "epsilon_spent", "seconds", "error")


class SweepIncomplete(FedShieldError):
    """Some cells failed; the others are in the results (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Cell:
    """One point of the grid. ``epsilon`` inf = no DP; ``partition`` "iid" or a Dirichlet α as text."""

    epsilon: float
    partition: str
    per_round: int
    strategy: str
    seed: int

    @property
    def key(self) -> str:
        eps = "inf" if math.isinf(self.epsilon) else f"{self.epsilon:g}"
        part = "iid" if self.partition == "iid" else f"a{self.partition}"
        return f"eps-{eps}_{part}_per-{self.per_round or 'all'}_{self.strategy}_seed-{self.seed}"

    def run_args(self) -> list[str]:
        args = ["--epsilon", f"{self.epsilon:g}"] if math.isfinite(self.epsilon) else ["--no-dp"]
        if self.partition != "iid":
            args += ["--dirichlet", self.partition]
        return args + ["--per-round", str(self.per_round), "--strategy", self.strategy, "--seed", str(self.seed)]


@dataclass
class SweepSpec:
    """What a sweep varies (lists) and what every cell shares (``task``, ``clients``, ``rounds``, ``fixed``)."""

    task: str
    clients: int
    rounds: int
    epsilons: list[float]
    partitions: list[str]
    per_round: list[int]
    strategies: list[str]
    seeds: int
    fixed: dict[str, str] = field(default_factory=dict)

    def validate(self) -> SweepSpec:
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ConfigError("--epsilon: give positive values or inf (no DP), e.g. 0.5,1,3,8,inf")
        for p in self.partitions:
            if p != "iid" and not _positive(p):
                raise ConfigError(f"--dirichlet {p}: give positive α values or iid, e.g. 0.1,1.0")
        if any(k < 0 or k > self.clients for k in self.per_round):
            raise ConfigError(f"--per-round: every value must be between 1 and --clients {self.clients} (0 = all)")
        if self.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
        return self

    def cells(self) -> list[Cell]:
        return [Cell(e, p, k, s, seed) for e, p, k, s, seed in itertools.product(
            self.epsilons, self.partitions, self.per_round, self.strategies, range(self.seeds))]

    def shared(self) -> dict[str, Any]:
        """What must match for a sweep folder to be resumed."""
        return {"task": self.task, "clients": self.clients, "rounds": self.rounds, "fixed": self.fixed}

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["epsilons"] = ["inf" if math.isinf(e) else e for e in self.epsilons]
        return {"format": SWEEP_FORMAT, "version": 1, **doc}


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def parse_list(flag: str, text: str, kind: type) -> list[Any]:
    """``"0.5,1,inf"`` -> values of ``kind``; a one-line ``ConfigError`` naming the flag otherwise."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            values.append(math.inf if kind is float and item.lower() in ("inf", "none") else kind(item))
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {item!r} is not a {kind.__name__}; give a comma-separated "
                              "list") from None
    if not values:
        raise ConfigError(f"{flag}: give at least one value")
    return list(dict.fromkeys(values))


def is_sweep(folder: Path) -> bool:
    """Whether ``folder`` holds a sweep (rather than one run)."""
    return (Path(folder) / SWEEP_FILE).is_file()


def open_sweep(spec: SweepSpec, out: Path) -> None:
    """Create ``out`` for ``spec``, or check that it holds a sweep of the same task and settings."""
    out = Path(out)
    path = out / SWEEP_FILE
    if path.is_file():
        try:
            old = read_json(path)
        except ValueError:
            raise RunFolderError(f"{path}: damaged (not JSON); pass a new --out") from None
        if old.get("format") != SWEEP_FORMAT:
            raise RunFolderError(f"{path}: not a FedShield sweep; pass a new --out")
        theirs = {k: old.get(k) for k in spec.shared()}
        if theirs["task"] != spec.task:
            raise RunFolderError(f"--out {out}: holds a sweep of task {theirs['task']!r}, not {spec.task!r}; "
                                 "pass a new --out for this task")
        if theirs != spec.shared():
            diff = ", ".join(f"{k} {theirs[k]!r} (now {v!r})" for k, v in spec.shared().items() if theirs[k] != v)
            raise RunFolderError(f"--out {out}: holds a sweep with other settings: {diff}; pass a new --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderError(f"--out {out}: exists and is not a sweep folder; pass a new folder")
    atomic_write_json(path, spec.to_dict())


def load_spec(out: Path) -> SweepSpec:
    """The sweep specification stored in ``out`` (``RunFolderError`` for a folder that is no sweep)."""
    doc = read_json(Path(out) / SWEEP_FILE)
    if doc.get("format") != SWEEP_FORMAT:
        raise RunFolderError(f"{out / SWEEP_FILE}: not a FedShield sweep")
    fields = {k: doc[k] for k in ("task", "clients", "rounds", "partitions", "per_round", "strategies", "seeds",
                                  "fixed")}
    return SweepSpec(epsilons=[math.inf if e == "inf" else float(e) for e in doc["epsilons"]], **fields)


def cell_dir(out: Path, cell: Cell) -> Path:
    """The run folder of one cell of the sweep."""
    return Path(out) / CELLS_DIR / cell.key


def cell_finished(out: Path, cell: Cell) -> bool:
    """Whether the cell's run finished (a resumed sweep skips it)."""
    try:
        return read_json(cell_dir(out, cell) / "results.json").get("status") == "finished"
    except (OSError, ValueError):
        return False


def run_cell(spec: SweepSpec, out: Path, cell: Cell) -> tuple[bool, str]:
    """Run one cell as ``fl-sim run`` in a child process; (ok, last error line). Log in ``<cell>.log``."""
    folder = cell_dir(out, cell)
    if folder.exists():  # an interrupted attempt: start the cell over
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedshield.simulations.cli", "run", "--task", spec.task, "--clients",
           str(spec.clients), "--rounds", str(spec.rounds), "--run-dir", str(folder), "--no-plots", *cell.run_args()]
    for flag, value in spec.fixed.items():
        cmd += [flag, value]
    log = folder.parent / f"{cell.key}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 0:
        return True, ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return False, (errors[-1] if errors else (lines[-1] if lines else f"exit code {proc.returncode}"))[:300]


def track_cell(specs: list[TrackSpec], out: Path, cell: Cell, on_warning: Callable[[str], None]) -> None:
    """Log one cell that ran as a tracked run named by its key, grouped by the sweep folder's name (an MLflow
    experiment, a TensorBoard subfolder); a finished cell's plots are drawn first, as ``fl-sim report`` would."""
    if not specs:
        return
    folder = cell_dir(out, cell)
    if cell_finished(out, cell):
        report_run(folder)
    track_finished_run(specs, folder, name=cell.key, group=Path(out).resolve().name,
                       tags={"fedshield.sweep": str(Path(out).resolve())}, on_warning=on_warning)


def cell_row(out: Path, cell: Cell, error: str = "") -> dict[str, Any]:
    """One CSV row: the cell's settings and its final figures (empty when it has not finished)."""
    row: dict[str, Any] = {"key": cell.key, "epsilon": "inf" if math.isinf(cell.epsilon) else cell.epsilon,
                           "partition": cell.partition, "per_round": cell.per_round, "strategy": cell.strategy,
                           "seed": cell.seed, "status": "pending", "error": error}
    try:
        doc = read_json(cell_dir(out, cell) / "results.json")
    except (OSError, ValueError):
        return {**row, "status": "failed" if error else "pending"}
    metric = headline_metric_name(doc)
    final = doc.get("final", {})
    row.update({"status": doc.get("status"), "metric": metric, "central": final_central(doc).get(metric),
                "federated": final.get("evaluate", {}).get(metric),
                "initial_federated": final.get("initial_evaluate", {}).get(metric),
                "epsilon_spent": final.get("epsilon_max"),
                "seconds": round(doc.get("finished_at", time.time()) - doc.get("started_at", time.time()), 1),
                "error": error or doc.get("error", "")})
    return row


def write_table(out: Path, spec: SweepSpec, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rewrite ``sweep.csv`` and ``sweep-results.json`` from the cells of ``spec``; return the rows."""
    rows = [cell_row(out, cell, (errors or {}).get(cell.key, "")) for cell in spec.cells()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(out) / CSV_FILE, buffer.getvalue())
    atomic_write_json(Path(out) / JSON_FILE,
                      {"format": "fedshield-sweep-results", "sweep": spec.to_dict(), "cells": rows})
    return rows


def varied_keys(spec: SweepSpec) -> tuple[str, ...]:
    """The grid dimensions besides ε and seed that take more than one value (the plot's groups)."""
    return tuple(k for k, values in (("partition", spec.partitions), ("per_round", spec.per_round),
                                     ("strategy", spec.strategies)) if len(values) > 1)


def _legend_value(key: str, value: Any) -> Any:
    """How a grid value reads in the plot's legend: partitions by name (``α=0.1``, ``iid``)."""
    if key == "partition" and str(value) != "iid":
        return f"Dirichlet α {value}"
    return value


def report_sweep(out: Path, errors: dict[str, str] | None = None) -> list[Path]:
    """Rewrite the table, draw the privacy–utility curve and write ``summary.md``; return the files."""
    out = Path(out)
    spec = load_spec(out)
    rows = write_table(out, spec, errors)
    done = [r for r in rows if r["status"] == "finished"]
    metric = next((r["metric"] for r in done), "accuracy")
    groups = varied_keys(spec)
    points = [{"epsilon": math.inf if r["epsilon"] == "inf" else float(r["epsilon"]), metric: r["central"],
               "seed": r["seed"], **{k: _legend_value(k, r[k]) for k in groups}} for r in done]
    from fedshield.simulations import plots

    curve = plots.plot_privacy_utility(points, out / "plots" / "privacy_utility.png", metric=metric, group_keys=groups)
    summary = out / "summary.md"
    atomic_write_text(summary, sweep_summary_markdown(spec, rows, metric, groups, curve.relative_to(out)))
    return [out / CSV_FILE, out / JSON_FILE, curve, summary]


def sweep_summary_markdown(spec: SweepSpec, rows: list[dict[str, Any]], metric: str, groups: tuple[str, ...],
                           curve: Path) -> str:
    """Mean ± std of the central test metric per (group, ε), over the seeds that finished."""
    done = [r for r in rows if r["status"] == "finished" and r["central"] is not None]
    failed = [r for r in rows if r["status"] not in ("finished", "pending")]
    lines = [f"# Sweep: {spec.task}, {spec.clients} sites, {spec.rounds} rounds", "",
             f"{len(done)} of {len(rows)} cells finished" + (f", {len(failed)} failed" if failed else "")
             + f"; figure: {metric} of the final model on the central test set (mean ± std over seeds).", "",
             "| " + " | ".join([*groups, "ε", metric, "seeds", "worst ε spent"]) + " |",
             "|" + "---|" * (len(groups) + 4)]
    def keyfn(r: dict[str, Any]) -> tuple[tuple[str, ...], float]:
        return tuple(str(r[g]) for g in groups), math.inf if r["epsilon"] == "inf" else float(r["epsilon"])

    for (names, epsilon), cell_rows in itertools.groupby(sorted(done, key=keyfn), key=keyfn):
        members = list(cell_rows)
        values = [float(m["central"]) for m in members]
        spent = [float(m["epsilon_spent"]) for m in members if m["epsilon_spent"] is not None]
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        eps = "∞ (no DP)" if math.isinf(epsilon) else f"{epsilon:g}"
        lines.append("| " + " | ".join([*names, eps, f"{statistics.mean(values):.4f} ± {std:.4f}", str(len(values)),
                                        f"{max(spent):.3f}" if spent else "–"]) + " |")
    for r in failed:
        lines.append(f"\n- failed: `{r['key']}`: {r['error']} (log: cells/{r['key']}.log)")
    lines += ["", f"![privacy–utility]({curve.as_posix()})", ""]
    return "\n".join(lines)
