"""The FedShield ClientApp: one site's training and evaluation, the same in deployment and simulation.

API path: Flower's legacy ``client_fn``/``NumPyClient`` messages under a Message-API ``ClientApp``.
Why: secure aggregation (Flower's SecAgg+) exists only as ``SecAggPlusWorkflow`` + ``secaggplus_mod``,
which speak the legacy FitIns/FitRes records; choosing that path now lets ``--secagg`` add one mod
here and one workflow on the server without a rewrite. Our own protocol additions (the schema
handshake and the end-of-run notice) travel as QUERY messages handled by a mod, so they compose with
any other mod.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch

from fedshield.common.flower_env import silence_flower

silence_flower()

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedshield.client.device import resolve_device
from fedshield.client.events import emit
from fedshield.client.local_evaluation import evaluate_round
from fedshield.client.local_training import train_round
from fedshield.client.site_policy import site_policy_mod
from fedshield.client.site_privacy import close_run, released_counts
from fedshield.client.site_session import (
    count_message,
    identify_site,
    load_site,
    privacy_settings,
    site_model,
)
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.common.torch_arrays import model_to_ndarrays, ndarrays_to_model
from fedshield.flower_ext.legacy_api import (
    Client,
    NumPyClient,
    adaptiveclipping_mod,
    fixedclipping_mod,
    recorddict_to_fitins,
)
from fedshield.flower_ext.message_types import Mod
from fedshield.flower_ext.secagg import secaggplus_when_asked
from fedshield.tasks.base import DataSchema

log = logging.getLogger("fedshield.client")

QUERY_RECORD = "fedshield"


def _apply_thread_limit() -> None:
    threads = os.environ.get("FEDSHIELD_THREADS")
    if threads and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def ledger_run_id(cfg: RunConfig, context: Context) -> str:
    """The run this site's ledger records releases under: the FedShield run id the coordinator sends, so a
    resumed run (a new Flower run) continues its original run's entries and plan; a coordinator that sends
    none (an older FedShield) is known by its Flower run id. Whatever id a coordinator claims, a (run, round)
    already released is refused (:meth:`fedshield.client.privacy_ledger.PrivacyLedger.begin`)."""
    return cfg.fedshield_run_id or str(context.run_id)


class SiteClient(NumPyClient):
    """Trains and evaluates the run's task on this site's data."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def _prepare(self, config: dict[str, Any]):
        _apply_thread_limit()
        cfg = RunConfig.from_flower(config)
        site = identify_site(self.context.node_config, cfg)
        task, options, data = load_site(site, cfg)
        run_schema = DataSchema.from_config(config)
        problem = run_schema.mismatch(data.schema)
        if problem:
            raise ConfigError(f"{site.data_path}: data does not match the federation ({problem})")
        model = site_model(task, run_schema, options, seed=cfg.seed)
        self.process = count_message()
        return cfg, site, task, data, model

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
        rnd = int(config.get("round", 0))
        site_name = "?"
        events = None
        try:
            cfg, site, task, data, model = self._prepare(config)
            site_name, events = site.name, site.events_file
            ndarrays_to_model(model, parameters)
            device = resolve_device(site.settings.device if site.settings is not None else cfg.device)
            privacy = privacy_settings(site, cfg)
            emit(events, "train-start", round=rnd, examples=len(data.train), dp=privacy.enabled,
                 threads=torch.get_num_threads(), device=str(device))
            started = time.perf_counter()
            outcome = train_round(task, data, model, cfg, run_id=ledger_run_id(cfg, self.context), rnd=rnd,
                                  privacy=privacy, device=device)
            seconds = time.perf_counter() - started
        except Exception as exc:
            emit(events, "error", round=rnd, stage="train", message=str(exc))
            raise
        metrics: dict[str, Any] = {
            "site": site_name,
            "dp": privacy.enabled,
            "site-metrics": outcome.statistics,
            # how warm this site's process is: the same pid and one data load / model build per run
            "worker-pid": self.process["pid"],
            "worker-messages": self.process["messages"],
            "worker-data-loads": self.process["data_loads"],
            "worker-model-builds": self.process["model_builds"],
        }
        if outcome.loss is not None:
            metrics["train-loss"] = outcome.loss
        if outcome.statistics == "exact" or site.virtual is not None:
            # a timing grows with the examples sampled: a side channel a real DP site keeps to itself
            metrics["train-seconds"] = seconds
        if privacy.enabled:
            metrics.update({"epsilon": outcome.epsilon, "delta": outcome.delta,
                            "noise-multiplier": outcome.noise_multiplier, "sample-rate": outcome.sample_rate})
        emit(events, "train-end", round=rnd, loss=outcome.result.loss, seconds=seconds,
             epsilon=metrics.get("epsilon"), steps=outcome.result.steps)
        return model_to_ndarrays(model), outcome.count, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]):
        rnd = int(config.get("round", 0))
        events = None
        try:
            cfg, site, task, data, model = self._prepare(config)
            events = site.events_file
            ndarrays_to_model(model, parameters)
            device = resolve_device(site.settings.device if site.settings is not None else cfg.device)
            outcome = evaluate_round(task, data, model, cfg, run_id=ledger_run_id(cfg, self.context), rnd=rnd,
                                     privacy=privacy_settings(site, cfg), device=device)
        except Exception as exc:
            emit(events, "error", round=rnd, stage="evaluate", message=str(exc))
            raise
        emit(events, "evaluate", round=rnd, loss=outcome.loss, **outcome.metrics)
        metrics = {"site": site.name, "site-metrics": outcome.statistics, **outcome.metrics}
        if outcome.epsilon is not None:
            metrics["epsilon"] = outcome.epsilon
        return outcome.loss, outcome.count, metrics


def fedshield_query_mod(msg: Message, context: Context, call_next) -> Message:
    """Answer FedShield's QUERY messages: ``describe`` (schema handshake) and ``run-complete``."""
    if msg.metadata.message_type != MessageType.QUERY or QUERY_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    request = msg.content.config_records[QUERY_RECORD]
    action = str(request.get("action", ""))
    reply = ConfigRecord()
    try:
        cfg = RunConfig.from_flower(dict(request))
        run_id = ledger_run_id(cfg, context)
        site = identify_site(context.node_config, cfg)
        reply["site"] = site.name
        privacy = privacy_settings(site, cfg)
        if action == "describe":
            _, _, data = load_site(site, cfg)
            reply.update(data.schema.to_config())
            if privacy.enabled and privacy.private_statistics:  # the counts as released once, never the exact ones
                counts = released_counts(privacy, data, cfg, run_id=run_id)
                reply["examples-train"], reply["examples-val"] = counts.released_train, counts.released_val
            else:
                reply["examples-train"], reply["examples-val"] = len(data.train), len(data.val)
            if privacy.enabled:  # the site's own setting (outside ε, as its others): the dashboard shows ε against it
                reply["epsilon-budget"] = privacy.epsilon
            emit(site.events_file, "joined-run", run_id=run_id, task=cfg.task)
            if not cfg.dp and privacy.enabled:  # the coordinator's --no-dp is a proposal only
                notice = ("the coordinator proposes training WITHOUT DP; this site keeps DP-SGD (its own setting: only "
                          "`fl-client join --no-dp` turns it off)")
                log.warning(notice)
                emit(site.events_file, "notice", message=notice)
        elif action == "refused":  # the coordinator left this site out of the run (server/site_identity.py)
            reason = f"the coordinator refused this site: {str(request.get('reason', 'no reason given'))}"
            log.warning(reason)
            emit(site.events_file, "refused", run_id=str(context.run_id), message=reason)
        elif action == "run-complete":
            if privacy.enabled:
                close_run(privacy, run_id)
            emit(site.events_file, "run-complete", run_id=run_id,
                 status=str(request.get("status", "finished")))
        else:
            reply["error"] = f"unknown FedShield query {action!r}"
    except Exception as exc:  # reported to the server, which names the site and the cause
        reply["error"] = str(exc)
    return Message(RecordDict({QUERY_RECORD: reply}), reply_to=msg)


def central_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Client-side clipping for central DP, on TRAIN messages only and only when the run asks for it.

    Flower's clipping mods raise when the server sent no clipping norm, and must never wrap evaluate
    (they would break it), so this mod picks Flower's fixed or adaptive clipping mod per message from
    the round config the server sent.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    config = recorddict_to_fitins(msg.content, keep_input=True).config
    if str(config.get("central-dp-side", "server")) != "client" or str(config.get("central-dp", "off")) == "off":
        return call_next(msg, context)
    mod = adaptiveclipping_mod if str(config["central-dp"]) == "adaptive" else fixedclipping_mod
    return mod(msg, context, call_next)


def client_fn(context: Context) -> Client:
    """Flower's legacy entry: a fresh :class:`SiteClient` per message (data stays cached per process)."""
    return SiteClient(context).to_client()


# Order matters: the allowlist first (before any data access); SecAgg+ before client-side clipping, so
# clipping sees the plain update and SecAgg+ masks the clipped one.
MODS = (site_policy_mod, fedshield_query_mod, secaggplus_when_asked, central_clipping_mod)


def build_client_app(first: tuple[Mod, ...] = (), innermost: tuple[Mod, ...] = ()) -> ClientApp:
    """The FedShield ClientApp; ``first``: mods that run before the site's own (a simulation's virtual
    site folders, :class:`fedshield.simulations.virtual_sites.VirtualSiteFolders`); ``innermost``: mods
    next to the training itself, inside SecAgg+ (a simulation's attacking sites,
    :class:`fedshield.simulations.attacks.AttackingSites`)."""
    return ClientApp(client_fn=client_fn, mods=[*first, *MODS, *innermost])


app = build_client_app()
