"""What the dashboard shows, built from a run's ``results.json`` and, where known, its federation's sites.

:func:`dashboard_state` is a pure function of the two documents, so the page, ``fl-server dashboard`` on a
finished run and a simulation's run folder all show the same figures. Everything it returns is JSON.
"""

from __future__ import annotations

from typing import Any

from fedshield.common.results_view import ROUND_METRICS, headline_metric_name

#: sites listed at most (a 1,000-site simulation lists the first ones and says how many there are)
MAX_SITES = 200

# A site's state, the first that applies: revoked (federation.toml), refused by the handshake, dropped (its last
# round failed), training / evaluating (sampled for the stage in flight), connected (took part), enrolled
# (in the federation, not seen in this run yet).
REVOKED, REFUSED, DROPPED, TRAINING, EVALUATING, CONNECTED, ENROLLED = (
    "revoked", "refused", "dropped", "training", "evaluating", "connected", "enrolled")


def dashboard_state(doc: dict[str, Any] | None, federation_sites: dict[str, str] | None = None) -> dict[str, Any]:
    """The page's whole state: the run, its sites, every round's figures and every failure.

    ``doc``: the run's results.json (None: not written yet); ``federation_sites``: site name -> ``enrolled`` or
    ``revoked`` (None without a federation: a ``--insecure`` run or a simulation).
    """
    doc = doc or {}
    rounds = [r for r in doc.get("rounds", []) if isinstance(r, dict) and "round" in r]
    finished = [r for r in rounds if "evaluate" in r]
    in_flight = doc.get("in_flight") if doc.get("status") == "running" else None
    return {
        "run": {
            "status": doc.get("status", "starting"),
            "task": doc.get("task"),
            "mode": doc.get("mode"),
            "rounds_total": doc.get("config", {}).get("rounds"),
            "round": finished[-1]["round"] if finished else None,
            "in_flight": in_flight,
            "headline": headline_metric_name(doc) if doc else "accuracy",
            "secagg": bool(doc.get("config", {}).get("secagg", False)),
            "dp": bool(doc.get("privacy", {}).get("sample_level_dp", True)),
            "connected": doc.get("connected"),
            "min_clients": doc.get("config", {}).get("min-clients"),
            "started_at": doc.get("started_at"),
            "updated_at": doc.get("updated_at"),
            "finished_at": doc.get("finished_at"),
            "error": doc.get("error"),
        },
        **_sites(doc, rounds, in_flight, federation_sites or {}),
        "rounds": [_round(r, finished[i - 1] if i else None) for i, r in enumerate(finished)],
        "failures": _failures(rounds),
    }


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(values[k]) for k in ROUND_METRICS if isinstance(values.get(k), (int, float))}


def _round(entry: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """One evaluated round: its wall time since the round before ended, aggregate and per-site figures."""
    seconds = None
    if previous is not None and previous.get("finished_at") and entry.get("finished_at"):
        seconds = round(float(entry["finished_at"]) - float(previous["finished_at"]), 3)
    train = entry.get("train", {})
    evaluation = entry.get("evaluate", {})
    return {
        "round": entry["round"],
        "seconds": seconds,
        "metrics": _metrics(evaluation.get("aggregate", {})),
        "train_loss": train.get("loss"),
        "epsilon_max": train.get("epsilon_max"),
        "sites": {name: _metrics(values) for name, values in sorted(evaluation.get("sites", {}).items())},
        "centralized": _metrics(entry.get("centralized", {})),
        "secagg_stages_s": entry.get("secagg_stages_s", {}),
    }


def _failures(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in rounds:
        for stage in ("train", "evaluate"):
            for failure in entry.get(stage, {}).get("failures", []):
                out.append({"round": entry["round"], "stage": stage, "site": failure.get("site"),
                            "reason": failure.get("reason")})
    return out


def _sites(doc: dict[str, Any], rounds: list[dict[str, Any]], in_flight: dict[str, Any] | None,
           federation_sites: dict[str, str]) -> dict[str, Any]:
    """``sites`` (one row per site, at most :data:`MAX_SITES`) and ``sites_total``."""
    described: dict[str, Any] = doc.get("sites", {})
    refused: dict[str, str] = doc.get("refused_sites", {})
    last: dict[str, dict[str, Any]] = {}  # site -> the latest thing the run saw of it, in round and stage order
    for entry in rounds:
        for stage in ("train", "evaluate"):
            part = entry.get(stage, {})
            for name, values in part.get("sites", {}).items():
                seen = last.setdefault(name, {})
                seen.update(round=entry["round"], failed=None)
                if isinstance(values.get("epsilon"), (int, float)):
                    seen["epsilon"] = float(values["epsilon"])
            for failure in part.get("failures", []):
                last.setdefault(str(failure.get("site")), {}).update(round=entry["round"], failed=failure.get("reason"))
    flight = set(in_flight.get("sites", [])) if in_flight else set()
    # a site only in flight is not listed: a simulation's sampled virtual site is named once it answers
    names = sorted(set(described) | set(last) | set(refused) | set(federation_sites))
    rows = []
    for name in names[:MAX_SITES]:
        info = described.get(name, {})
        seen = last.get(name, {})
        state, reason = _state(name, federation_sites, refused, seen, in_flight, flight, described)
        budget = info.get("epsilon-budget")
        rows.append({"name": name, "state": state, "reason": reason, "epsilon": seen.get("epsilon"),
                     "budget": float(budget) if isinstance(budget, (int, float)) else None,
                     "dp": info.get("dp", doc.get("privacy", {}).get("sample_level_dp")),
                     "examples_train": info.get("examples-train"), "examples_val": info.get("examples-val"),
                     "last_round": seen.get("round")})
    return {"sites": rows, "sites_total": len(names)}


def _state(name: str, federation_sites: dict[str, str], refused: dict[str, str], seen: dict[str, Any],
           in_flight: dict[str, Any] | None, flight: set[str], described: dict[str, Any]) -> tuple[str, str | None]:
    if federation_sites.get(name) == "revoked":
        return REVOKED, "revoked by the coordinator (fl-server revoke-site)"
    if name in refused:
        return REFUSED, refused[name]
    if seen.get("failed"):
        return DROPPED, str(seen["failed"])
    if name in flight and in_flight is not None:
        return (TRAINING if in_flight.get("stage") == "train" else EVALUATING), None
    if name in described or seen:
        return CONNECTED, None
    return ENROLLED, None
