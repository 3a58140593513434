"""Human views of ``results.json``: one line per finished round, and a final summary table.

``fl-server start`` and ``fl-sim run`` both watch the run's ``results.json`` (written atomically by the
ServerApp) and print what changed, so deployment and simulation look the same to a user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from fedshield.common.atomic_io import read_json

HEADLINE = ("accuracy", "r2", "mse", "frechet_digits", "bleu")
#: validation metrics shown per round (server and sim progress lines, `fl-client join`), in this order
ROUND_METRICS = ("loss", "accuracy", "f1", "roc_auc", "mse", "mae", "r2", "frechet_digits", "exact_match", "bleu")
MAX_TABLE_SITES = 20


def headline_metric_name(doc: dict[str, Any]) -> str:
    """The metric a run is judged by, from its schema kind: accuracy, r2, frechet_digits (dcgan) or bleu."""
    kind = doc.get("schema", {}).get("schema-kind", "classification")
    return {"classification": "accuracy", "generation": "frechet_digits", "sequence": "bleu"}.get(kind, "r2")


def headline_metric(aggregate: dict[str, Any]) -> tuple[str, float] | None:
    """The first of :data:`HEADLINE` present in ``aggregate``, as (name, value); None when none is."""
    for name in HEADLINE:
        if aggregate.get(name) is not None:
            return name, float(aggregate[name])
    return None


def round_line(doc: dict[str, Any], entry: dict[str, Any]) -> str:
    """``round 2/5  loss 0.41  accuracy 0.913  f1 0.905  ε≤1.93  sites 3/3``."""
    total = doc.get("config", {}).get("rounds", "?")
    parts = [f"round {entry['round']}/{total}" if entry["round"] else "round 0 (initial model)"]
    train = entry.get("train")
    if train:
        if train.get("loss") is not None:
            parts.append(f"train loss {train['loss']:.4f}")
        ok = len(train.get("sites", {}))
        parts.append(f"sites {ok}/{train.get('sampled', ok)}")
        if train.get("epsilon_max") is not None:
            parts.append(f"ε≤{train['epsilon_max']:.3f}")
    evaluation = entry.get("evaluate", {}).get("aggregate", {})
    for key in ROUND_METRICS:
        if evaluation.get(key) is not None:
            parts.append(f"val {key} {evaluation[key]:.4f}")
    central = entry.get("centralized")
    if central:
        head = headline_metric(central)
        if head:
            parts.append(f"central test {head[0]} {head[1]:.4f}")
    failures = (train or {}).get("failures", []) + entry.get("evaluate", {}).get("failures", [])
    for failure in failures:
        parts.append(f"[{failure['site']} failed: {failure['reason'][:160]}]")
    return "  ".join(parts)


def summary_table(doc: dict[str, Any]) -> Table:
    """Per-site final metrics and privacy."""
    table = Table(title=f"{doc.get('task')} — {doc.get('status')}")
    table.add_column("site")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    last: dict[str, Any] = next((r for r in reversed(doc.get("rounds", [])) if "evaluate" in r), {})
    last_train: dict[str, Any] = next((r for r in reversed(doc.get("rounds", [])) if "train" in r), {})
    shown = ("accuracy", "f1", "roc_auc", "mse", "r2", "frechet_digits", "exact_match", "bleu", "loss")
    present = {k for s in last.get("evaluate", {}).get("sites", {}).values() for k in s}
    metric_names = [m for m in shown if m in present]
    for name in metric_names:
        table.add_column(name, justify="right")
    table.add_column("ε spent", justify="right")
    described = doc.get("sites", {})
    last_sites = last.get("evaluate", {}).get("sites", {})
    if doc.get("total_sites", len(described)) > len(described) and last_sites:
        # sampled rounds: the sites of the last round, which the handshake may not have described
        sites = sorted((name, described.get(name, {"examples-val": info.get("examples", "")}))
                       for name, info in last_sites.items())
    else:
        sites = sorted(described.items())
    if len(sites) > MAX_TABLE_SITES:  # a 1,000-site simulation: show the first ones, say how many more
        table.caption = f"first {MAX_TABLE_SITES} of {len(sites)} described sites; all of them in results.json"
        sites = sites[:MAX_TABLE_SITES]
    if any(info.get("site-metrics") == "dp" for info in last_sites.values()):
        note = "sites' counts and metrics: noisy DP releases inside each site's ε (clamped to each metric's range)"
        table.caption = f"{table.caption}; {note}" if table.caption else note
    for site, info in sites:
        ev = last.get("evaluate", {}).get("sites", {}).get(site, {})
        tr = last_train.get("train", {}).get("sites", {}).get(site, {})
        eps = ev.get("epsilon", tr.get("epsilon"))  # after the site's last release, its final evaluation
        table.add_row(site.replace("hospital_", "h_"), str(info.get("examples-train", "")),
                      str(info.get("examples-val", "")),
                      *[f"{ev[m]:.4f}" if isinstance(ev.get(m), (int, float)) else "" for m in metric_names],
                      f"{eps:.3f}" if isinstance(eps, (int, float)) else ("off" if tr.get("dp") is False else ""))
    return table


class ResultsWatcher:
    """Polls ``results.json`` and calls ``on_round`` once per finished round (in a thread)."""

    def __init__(self, path: Path, on_round: Callable[[dict[str, Any], dict[str, Any]], None],
                 on_status: Callable[[dict[str, Any]], None] | None = None, interval: float = 0.25) -> None:
        self.path = Path(path)
        self.on_round = on_round
        self.on_status = on_status
        self.interval = interval
        self._seen: set[int] = set()
        self._status: tuple[Any, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def poll(self) -> dict[str, Any] | None:
        try:
            doc = read_json(self.path)
        except (FileNotFoundError, ValueError):
            return None
        status = (doc.get("status"), doc.get("connected"))
        if status != self._status and self.on_status is not None:
            self._status = status
            self.on_status(doc)
        for entry in doc.get("rounds", []):
            if "evaluate" in entry and entry["round"] not in self._seen:
                self._seen.add(entry["round"])
                self.on_round(doc, entry)
        return doc

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def start(self) -> ResultsWatcher:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any] | None:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.poll()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float | None = None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            doc = self.poll()
            if doc is not None and predicate(doc):
                return doc
            time.sleep(self.interval)
        return None
