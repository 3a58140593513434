"""Which site a ClientApp serves, and its data, loaded once per process.

Deployment: ``fl-client join`` sets the site's node config (:class:`SiteNodeConfig`: data path, name,
state folder, events file and the site's privacy settings). Simulation: Flower gives each virtual SuperNode only
``partition-id``/``num-partitions``; the site folder is then ``<sim-data-dir>/site_NNNN`` from the run
config, and its state lives under the simulation's run folder.

A site loads only tasks installed in its own environment (resolved from the local registry, never
code from the server), and the data it loads is cached per process so a warm process (a Ray actor in
simulation) reads its folder once per run.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.site_privacy import PrivacySettings
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import DataSchema, SiteData, Task, TaskOptions
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task
from fedshield.tasks.site_config import site_options


@dataclass(frozen=True)
class SiteIdentity:
    """Where a site's data, state and event stream live, and (a real site) its own settings."""

    name: str
    data_path: Path
    state_dir: Path
    events_file: str | None
    settings: SiteNodeConfig | None  # None: a simulation's virtual site, which the experimenter configures
    virtual: int | None = None  # simulation: the virtual site's number (its folder may not exist yet)


def identify_site(node_config: Mapping[str, Any], cfg: RunConfig) -> SiteIdentity:
    """Resolve the site folder from the node config (deployment) or partition id (simulation)."""
    settings = SiteNodeConfig.from_flower(node_config)
    if settings is not None:
        return SiteIdentity(settings.site_name, Path(settings.data_path), Path(settings.state_dir),
                            settings.events_file or None, settings)
    if "partition-id" in node_config and cfg.sim_data_dir:
        pid = int(node_config["partition-id"])
        name = f"site_{pid:04d}"
        root = Path(cfg.sim_data_dir)
        states = Path(cfg.sim_state_dir) if cfg.sim_state_dir else root.parent / "site-state"
        return SiteIdentity(name, root / name, states / name, None, None, virtual=pid)
    raise ConfigError("this SuperNode has no data-path in its node config; start it with `fl-client join --data DIR`")


def privacy_settings(site: SiteIdentity, cfg: RunConfig) -> PrivacySettings:
    """The site's DP settings: a real site's own (its node config), never the run's.

    A site that joined with DP (the default) keeps DP even if the run asks for ``--no-dp``: a server
    cannot switch off a site's privacy, nor choose its budget, its clipping bound or exact metrics.
    A simulation's virtual sites take the run's settings: the experimenter owns them all.
    """
    own = site.settings
    if own is None:
        return PrivacySettings(enabled=cfg.dp, epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm,
                               state_dir=site.state_dir, accountant=cfg.accountant, virtual_site=site.virtual,
                               site_metrics=cfg.site_metrics)
    return PrivacySettings(enabled=own.dp, epsilon=own.epsilon, delta=own.delta, max_grad_norm=own.max_grad_norm,
                           state_dir=site.state_dir, accountant=own.accountant, site_metrics=own.site_metrics,
                           allow_repeats=own.allow_repeats, metrics_cost=own.metrics_cost, data_dir=site.data_path)


# Per-process caches: a warm process (FedShield's warm executor, a Ray actor) loads a site's data once
# and builds the model once. Bounded, so a simulation actor serving many virtual sites stays small.
_MAX_CACHED_SITES = 8
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[Any, ...], tuple[Task, TaskOptions, SiteData]] = OrderedDict()
_models: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
_stats = {"messages": 0, "data_loads": 0, "model_builds": 0}


def load_site(site: SiteIdentity, cfg: RunConfig) -> tuple[Task, TaskOptions, SiteData]:
    """Load and validate the site's data for the run's task (cached per process).

    A virtual site of ``fl-sim run`` has its folder written before its message gets here (the
    simulation's first ClientApp mod, :class:`fedshield.simulations.virtual_sites.VirtualSiteFolders`).
    """
    site_task, options = site_options(site.data_path, {"seed": cfg.seed})
    if site_task is not None and site_task != cfg.task and not _reads_sites_of(cfg.task, site_task):
        raise ConfigError(
            f"{site.data_path}/fedshield.toml: site holds data for task {site_task!r}, the run asks for "
            f"{cfg.task!r}; join a {site_task!r} federation"
        )
    options.model = cfg.model
    options.private = privacy_settings(site, cfg).enabled  # what the task may derive from the data (tabular)
    key = (str(site.data_path), cfg.task, repr(options))
    with _cache_lock:
        if key not in _cache:
            task = get_task(cfg.task)
            _cache[key] = (task, options, task.load_site(site.data_path, options))
            _stats["data_loads"] += 1
            while len(_cache) > _MAX_CACHED_SITES:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        return _cache[key]


def _reads_sites_of(run_task: str, site_task: str) -> bool:
    """Whether ``run_task`` declares that it reads site folders written for ``site_task`` (its optional
    ``reads_sites_of`` attribute; e.g. ``transfer-mobilenet`` reads ``cifar-cnn``'s colour images)."""
    from fedshield.tasks.registry import available_tasks

    task = available_tasks().get(run_task)
    return site_task in getattr(task, "reads_sites_of", ())


def site_model(task: Task, schema: DataSchema, options: TaskOptions, *, seed: int) -> nn.Module:
    """The task's model for ``schema``, built once per process; callers load the round's weights into it."""
    key = (task.name, repr(schema), options.model, seed)
    with _cache_lock:
        if key not in _models:
            _models[key] = build_model(task, schema, options, seed=seed)
            _stats["model_builds"] += 1
            while len(_models) > _MAX_CACHED_SITES:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return _models[key]


def count_message() -> dict[str, int]:
    """Count one handled message; return this process's counters (pid, messages, loads, builds)."""
    with _cache_lock:
        _stats["messages"] += 1
        return {"pid": os.getpid(), **_stats}
