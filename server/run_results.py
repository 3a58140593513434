"""``results.json`` and checkpoints of one run, written atomically after every step.

Layout of ``<run-dir>``::

    results.json              status, config, sites, one entry per round (train / evaluate / centralized)
    checkpoints/round-NNN.pt  the global model after round NNN
    server-state.pt           the last round's model, strategy and update-check state, results entry (resume)
    samples/round-NNN.png     what a generative task's model draws after round NNN (dcgan)
    model-final.pt            the global model after the last round

``fl-server start`` polls ``results.json`` to show progress, and ``fl-server status`` prints it.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedshield.common.atomic_io import atomic_write_bytes, atomic_write_json
from fedshield.common.metrics import weighted_mean
from fedshield.common.run_config import RunConfig
from fedshield.common.run_files import RESULTS_FILE, RESULTS_FORMAT
from fedshield.common.torch_arrays import model_to_ndarrays, state_dict_from_ndarrays
from fedshield.server.audit_trail import RunAudit
from fedshield.server.run_resume import ROUND_ENTRY_KEY, write_server_state
from fedshield.strategies.central_dp import client_level_epsilon
from fedshield.tasks.base import DataSchema

FINAL_MODEL = "model-final.pt"
SAMPLES_DIR = "samples"


def _clean(value: Any) -> Any:
    """JSON-safe scalars: floats that are not finite become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    if isinstance(value, bytes):
        return value.hex()
    return value


def _clean_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _clean(v) for k, v in d.items()}


class RunRecorder:
    """Collects the run's results; implements :class:`fedshield.strategies.recording.RoundObserver`.

    ``earlier``: the results.json of the run this one resumes, whose rounds up to ``resumed_after`` it keeps.
    ``state_source`` (set once the strategy exists): the server's state, saved after every round so a
    stopped run can resume (:mod:`fedshield.server.run_resume`).
    """

    def __init__(self, run_dir: Path | None, cfg: RunConfig, *, mode: str, earlier: dict[str, Any] | None = None,
                 resumed_after: int = 0) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.cfg = cfg
        self.model_template: nn.Module | None = None
        self.schema: DataSchema | None = None
        self.node_sites: dict[int, str] = {}
        self.enrolled_name: Callable[[int], str | None] | None = None
        self.total_sites = 0
        self.state_source: Callable[[], dict[str, Any]] | None = None
        self.audit: RunAudit | None = None  # the run's audit logs (deployment runs of `fl-server start`)
        self.global_parameters: list[np.ndarray] | None = None  # the global model after the last round
        self._rounds: dict[int, dict[str, Any]] = {}
        self.doc: dict[str, Any] = {
            "format": RESULTS_FORMAT,
            "version": 1,
            "mode": mode,
            "status": "starting",
            "task": cfg.task,
            "config": cfg.to_flower(),
            "privacy": {
                "sample_level_dp": cfg.dp,
                "central_dp": cfg.central_dp,
                **({"central_dp_side": cfg.central_dp_side, "central_noise_multiplier": cfg.central_noise,
                    "central_clip": cfg.central_clip, "central_delta": cfg.central_delta,
                    "client_level_accounting": "Opacus RDP, q = sampled/total sites"
                                               + ("" if cfg.fraction_train >= 1 else " (Poisson approximation)")}
                   if cfg.central_dp != "off" else {}),
            },
            "started_at": time.time(),
            "updated_at": time.time(),
            "sites": {},
            "rounds": [],
            "final": {},
        }
        if earlier is not None:
            from fedshield.server.run_resume import earlier_rounds

            kept = earlier_rounds(earlier, resumed_after)
            self.doc.update(started_at=earlier.get("started_at", self.doc["started_at"]),
                            sites=dict(earlier.get("sites", {})), rounds=kept,
                            resumed=[*earlier.get("resumed", []), {"at": time.time(), "after_round": resumed_after}])
            for key in ("privacy", "current_round"):
                if key in earlier:
                    self.doc[key] = earlier[key]
            self._rounds = {int(r["round"]): r for r in kept}

    # ------------------------------------------------------------------ lifecycle
    def name_sites_by(self, enrolled_name: Callable[[int], str | None]) -> None:
        """Name every site by ``enrolled_name(node id)`` (its key's enrolled name, server/site_identity.py), never
        by the ``site`` its replies claim."""
        self.enrolled_name = enrolled_name

    def set_status(self, status: str, **extra: Any) -> None:
        self.doc["status"] = status
        self.doc.update(extra)
        self.write()

    def set_sites(self, sites: dict[int, dict[str, Any]], schema: DataSchema, model: nn.Module,
                  total: int | None = None, refused: dict[int, str] | None = None) -> None:
        """Record the handshake: node id -> site description, the agreed schema, the model.

        ``total``: sites in the federation (a sampled simulation describes only some of them);
        ``refused``: node id -> name of sites that answered the handshake with an error (a spent
        budget, bad data), so their later failures are reported under their names.
        """
        self.node_sites.update(refused or {})
        self.total_sites = total or len(sites)
        self.doc["total_sites"] = self.total_sites
        self.schema = schema
        self.model_template = model
        self.global_parameters = model_to_ndarrays(model)
        for node_id, info in sites.items():
            self.node_sites[node_id] = str(info["site"])
            self.doc["sites"][str(info["site"])] = _clean_dict({k: v for k, v in info.items() if k != "site"})
        self.doc["schema"] = schema.to_config()
        self.doc["parameters"] = int(sum(p.numel() for p in model.parameters()))
        self.write()

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        self.doc.pop("in_flight", None)
        rounds = self.doc["rounds"]
        last = next((r for r in reversed(rounds) if "evaluate" in r), None)
        first = next((r for r in rounds if r["round"] == 0 and "evaluate" in r), None)
        final: dict[str, Any] = {}
        if last is not None:
            final["round"] = last["round"]
            final["evaluate"] = last["evaluate"]["aggregate"]
        if first is not None:
            final["initial_evaluate"] = first["evaluate"]["aggregate"]
        central = next((r for r in reversed(rounds) if "centralized" in r), None)
        if central is not None:  # simulation: the global model on the central test set, exact
            final["centralized"] = central["centralized"]
        eps = [r["train"].get("epsilon_max") for r in rounds if "train" in r]
        eps = [e for e in eps if e is not None]
        if eps:
            final["epsilon_max"] = max(eps)
        client_eps = [r["train"].get("client_level_epsilon") for r in rounds if "train" in r]
        client_eps = [e for e in client_eps if e is not None]
        if client_eps:
            final["client_level_epsilon"] = max(client_eps)
        self.doc["final"] = final
        self.doc["finished_at"] = time.time()
        if error:
            self.doc["error"] = error
        self.set_status(status)

    # ------------------------------------------------------------------ observer
    def _round(self, rnd: int) -> dict[str, Any]:
        if rnd not in self._rounds:
            entry: dict[str, Any] = {"round": rnd, "started_at": time.time()}
            self._rounds[rnd] = entry
            self.doc["rounds"].append(entry)
            self.doc["rounds"].sort(key=lambda r: r["round"])
        return self._rounds[rnd]

    def _site(self, node_id: int, metrics: dict[str, Any] | None = None) -> str:
        if self.enrolled_name is not None:
            return self.enrolled_name(node_id) or f"node-{node_id}"
        if metrics and "site" in metrics:
            self.node_sites[node_id] = str(metrics["site"])
        return self.node_sites.get(node_id, f"node-{node_id}")

    def on_sampled(self, rnd: int, stage: str, sampled: list[int]) -> None:
        """Record the stage in flight (``in_flight``: round, ``train``/``evaluate``, the sites asked, since when) for
        the dashboard; the stage's results replace it."""
        self.doc["in_flight"] = {"round": rnd, "stage": stage, "sites": sorted({self._site(nid) for nid in sampled}),
                                 "since": time.time()}
        self.write()

    def on_train(self, rnd, sampled, results, failed, aggregate, parameters) -> None:
        self.doc.pop("in_flight", None)
        entry = self._round(rnd)
        sites = {}
        for node_id, n, metrics in results:
            name = self._site(node_id, metrics)
            sites[name] = _clean_dict({"examples": n, **{k: v for k, v in metrics.items() if k != "site"}})
        reported = [(n, float(m["train-loss"])) for _, n, m in results if "train-loss" in m]
        total = sum(n for n, _ in reported)
        train: dict[str, Any] = {
            "sampled": len(sampled),
            "sites": sites,
            "failures": [{"site": self._site(nid), "reason": reason} for nid, reason in failed],
            "aggregate": _clean_dict(aggregate),
            "loss": _clean(sum(n * loss for n, loss in reported) / total) if total else None,
        }
        self._note_exact(results)
        eps = [float(m["epsilon"]) for _, _, m in results if "epsilon" in m]
        if eps:
            train["epsilon_max"] = max(eps)
        if self.cfg.central_dp != "off":
            train["client_level_epsilon"] = _clean(client_level_epsilon(self.cfg, max(1, self.total_sites), rnd))
        entry["train"] = train
        if self.audit is not None:
            self.audit.round_trained(rnd, len(sampled), sites, train["failures"])
        if parameters is not None:
            self.global_parameters = parameters
        if self.run_dir is not None and self.state_source is not None and self.global_parameters is not None \
                and self.model_template is not None:  # first: a resumed run starts from what it says
            # with this round's entry: a crash before results.json is written must not lose the round
            write_server_state(self.run_dir, rnd, state_dict_from_ndarrays(self.model_template, self.global_parameters),
                               {**self.state_source(), ROUND_ENTRY_KEY: json.loads(json.dumps(entry))})
        if parameters is not None:
            self._checkpoint(rnd, parameters)
        self.doc["current_round"] = rnd
        self.write()

    def on_secagg_stages(self, rnd: int, stages: dict[str, float]) -> None:
        """Wall time (s) of each SecAgg+ stage of round ``rnd``: setup, key shares, masked updates, unmasking."""
        self._round(rnd)["secagg_stages_s"] = {k: round(v, 3) for k, v in stages.items()}
        self.write()

    def on_evaluate(self, rnd, results, failed, loss, aggregate) -> None:
        self.doc.pop("in_flight", None)
        entry = self._round(rnd)
        sites = {}
        weighted = []
        for node_id, n, site_loss, metrics in results:
            name = self._site(node_id, metrics)
            values = {"loss": float(site_loss), **{k: float(v) for k, v in metrics.items()
                                                     if k != "site" and isinstance(v, (int, float))}}
            mode = {"site-metrics": metrics["site-metrics"]} if "site-metrics" in metrics else {}
            sites[name] = _clean_dict({"examples": n, **values, **mode})
            weighted.append((n, values))
        self._note_exact([(nid, n, m) for nid, n, _, m in results])
        entry["evaluate"] = {
            "sites": sites,
            "failures": [{"site": self._site(nid), "reason": reason} for nid, reason in failed],
            "aggregate": _clean_dict(weighted_mean(weighted)) if weighted else {},
        }
        entry["finished_at"] = time.time()
        self.write()

    def _note_exact(self, results: list[tuple[int, int, dict[str, Any]]]) -> None:
        """Name, at the top of the results, every site whose replies carried exact statistics of its data."""
        exact = {self._site(nid, m) for nid, _, m in results if str(m.get("site-metrics", "")) == "exact"}
        if exact:
            known = set(self.doc["privacy"].get("exact_site_metrics", []))
            self.doc["privacy"]["exact_site_metrics"] = sorted(known | exact)

    def on_centralized(self, rnd, loss, metrics) -> None:
        self._round(rnd)["centralized"] = _clean_dict({"loss": loss, **metrics})
        self.write()

    # ------------------------------------------------------------------ files
    def _checkpoint(self, rnd: int, parameters: list[np.ndarray]) -> None:
        if self.run_dir is None or self.model_template is None:
            return
        buffer = io.BytesIO()
        torch.save(
            {
                "format": "fedshield-checkpoint",
                "task": self.cfg.task,
                "model": self.cfg.model,
                "round": rnd,
                "schema": self.schema.to_config() if self.schema else {},
                "state_dict": state_dict_from_ndarrays(self.model_template, parameters),
            },
            buffer,
        )
        data = buffer.getvalue()
        atomic_write_bytes(self.run_dir / "checkpoints" / f"round-{rnd:03d}.pt", data)
        atomic_write_bytes(self.run_dir / FINAL_MODEL, data)
        self._samples(rnd, parameters)

    def _samples(self, rnd: int, parameters: list[np.ndarray]) -> None:
        """``samples/round-NNN.png`` for tasks that draw what they generate (``sample_grid``)."""
        from fedshield.tasks.registry import get_task

        grid = getattr(get_task(self.cfg.task), "sample_grid", None)
        if not callable(grid) or self.model_template is None:
            return
        from fedshield.common.torch_arrays import ndarrays_to_model

        ndarrays_to_model(self.model_template, parameters)
        atomic_write_bytes(self.run_dir / SAMPLES_DIR / f"round-{rnd:03d}.png", grid(self.model_template))  # type: ignore[operator]  # checked callable above

    def write(self) -> None:
        self.doc["updated_at"] = time.time()
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / RESULTS_FILE, self.doc)
