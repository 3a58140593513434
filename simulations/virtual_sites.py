"""Virtual sites built lazily: a simulation stores one partition plan, not one folder per site.

``fl-sim run`` writes into ``<run>/data``::

    pool/x.npy, pool/y.npy    the examples the sites share out (memory-mapped when read)
    pool/order.npy            example indices grouped by site; pool/offsets.npy: (sites + 1,) bounds
    pool/plan.json            data set, task, site names and sizes, partitioner, seed, augmentation
    test/                     the server's central test set, in the task's site-folder format

A virtual site's folder ``site_NNNN`` (the documented site format, read by the very loader deployment
uses) is written the first time a ClientApp serves that site, atomically, so a 1,000-site run only
ever materialises the sites it samples and no process holds every site's data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.common.errors import ConfigError, DataError
from fedshield.simulations.datasets import BundledDataset

PLAN_FORMAT = "fedshield-partition-plan"
POOL_DIR = "pool"
TEST_DIR = "test"
_lock = threading.Lock()


def write_plan(data_dir: Path, sites: BundledDataset, test: BundledDataset, parts: list[np.ndarray],
               names: list[str], meta: dict[str, Any]) -> None:
    """Write the pool, the plan and the central test folder into the new folder ``data_dir``."""
    from fedshield.simulations.split import write_site_folder

    data_dir = Path(data_dir)
    if data_dir.exists():
        raise ConfigError(f"{data_dir}: already exists; pass a new --run-dir")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=data_dir.parent))
    try:
        pool = tmp / POOL_DIR
        pool.mkdir()
        np.save(pool / "x.npy", sites.x)
        np.save(pool / "y.npy", sites.y)
        np.save(pool / "order.npy", np.concatenate(parts).astype(np.int64))
        np.save(pool / "offsets.npy", np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64))
        plan = {"format": PLAN_FORMAT, "version": 1, "dataset": sites.name, "task": sites.task,
                "feature_names": list(sites.feature_names), "target": sites.target,
                "site_config": sites.site_config, "names": names, "sizes": [int(len(p)) for p in parts], **meta}
        (pool / "plan.json").write_text(json.dumps(plan, indent=1))
        write_site_folder(tmp / TEST_DIR, test, np.arange(len(test.y)))
        tmp.rename(data_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_plan(data_dir: Path) -> dict[str, Any]:
    """The plan of a simulation's data folder; ``DataError`` when missing or foreign."""
    path = Path(data_dir) / POOL_DIR / "plan.json"
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable FedShield partition plan ({exc}); rerun fl-sim run") from None
    if plan.get("format") != PLAN_FORMAT:
        raise DataError(f"{path}: not a FedShield partition plan; rerun fl-sim run")
    return plan


@lru_cache(maxsize=4)
def _pool(data_dir: str) -> tuple[dict[str, Any], BundledDataset, np.ndarray, np.ndarray]:
    plan = read_plan(Path(data_dir))
    pool = Path(data_dir) / POOL_DIR
    data = BundledDataset(plan["dataset"], plan["task"], np.load(pool / "x.npy", mmap_mode="r"),
                          np.load(pool / "y.npy", mmap_mode="r"), tuple(plan["feature_names"]), plan["target"],
                          dict(plan["site_config"]))
    return plan, data, np.load(pool / "order.npy", mmap_mode="r"), np.load(pool / "offsets.npy")


def site_indices(data_dir: Path, site: int) -> np.ndarray:
    """Pool indices of virtual site number ``site``."""
    _, _, order, offsets = _pool(str(data_dir))
    if not 0 <= site < len(offsets) - 1:
        raise DataError(f"{data_dir}: no virtual site {site}; the plan has {len(offsets) - 1}")
    return np.asarray(order[offsets[site]:offsets[site + 1]])


def materialize_site(data_dir: Path, site: int) -> Path:
    """The folder of virtual site ``site``, written (atomically) on first use."""
    from fedshield.simulations.split import write_site_folder

    plan, data, _, _ = _pool(str(data_dir))
    folder = Path(data_dir) / plan["names"][site]
    if folder.is_dir():
        return folder
    with _lock:
        if folder.is_dir():
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=data_dir))
        try:
            write_site_folder(tmp / "site", data, site_indices(data_dir, site))
            try:
                os.rename(tmp / "site", folder)
            except OSError:  # another process (a second Ray actor) wrote it first: same content
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def has_plan(data_dir: Path) -> bool:
    return (Path(data_dir) / POOL_DIR / "plan.json").is_file()
