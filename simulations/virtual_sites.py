"""Virtual sites built lazily: a simulation stores one partition plan, not one folder per site.

``fl-sim run`` writes into ``<run>/data``::

    pool/x.npy, pool/y.npy    the examples the sites share out (a site's rows are read with pread)
    pool/order.npy            example indices grouped by site; pool/offsets.npy: (sites + 1,) bounds
    pool/plan.json            data set, task, site names and sizes, partitioner, seed, augmentation
    test/                     the server's central test set, in the task's site-folder format
    trusted/                  with --trusted-examples: the coordinator's trusted examples, held out of test/

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
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message

from fedshield.common.errors import ConfigError, DataError
from fedshield.simulations.datasets import BundledDataset, SimulationPool

PLAN_FORMAT = "fedshield-partition-plan"
POOL_DIR = "pool"
TEST_DIR = "test"
TRUSTED_DIR = "trusted"
_lock = threading.Lock()


def write_plan(data_dir: Path, pool: SimulationPool, parts: list[np.ndarray], names: list[str],
               meta: dict[str, Any], trusted: np.ndarray | None = None) -> None:
    """Write the pool, the plan and the central test folder into the new folder ``data_dir``; ``trusted``:
    indices of ``pool.test`` that form the coordinator's trusted folder instead (not tested on)."""
    from fedshield.simulations.split import write_site_folder

    data_dir = Path(data_dir)
    if data_dir.exists():
        raise ConfigError(f"{data_dir}: already exists; pass a new --run-dir")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=data_dir.parent))
    real = pool.real
    try:
        folder = tmp / POOL_DIR
        folder.mkdir()
        pool.write_x(folder / "x.npy")
        np.save(folder / "y.npy", pool.labels)
        np.save(folder / "order.npy", np.concatenate(parts).astype(np.int64))
        np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64))
        plan = {"format": PLAN_FORMAT, "version": 1, "dataset": real.name, "task": real.task,
                "feature_names": list(real.feature_names), "target": real.target,
                "site_config": real.site_config, "names": names, "sizes": [int(len(p)) for p in parts], **meta}
        (folder / "plan.json").write_text(json.dumps(plan, indent=1))
        if len(pool.test.y):
            held = np.zeros(len(pool.test.y), dtype=bool)
            if trusted is not None and len(trusted):
                held[trusted] = True
                write_site_folder(tmp / TRUSTED_DIR, pool.test, np.flatnonzero(held))
            write_site_folder(tmp / TEST_DIR, pool.test, np.flatnonzero(~held))
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


class NpyRows:
    """Rows of a C-ordered ``.npy`` file read with ``pread``: no memory map, so a Ray actor that serves
    hundreds of virtual sites holds only the rows it read, not the pages of the whole pool."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise DataError(f"{path}: Fortran-ordered arrays are not supported; rerun fl-sim run")
        self.path = path
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (in that order) as an in-memory array of shape (len(idx), *row shape)."""
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(idx), -1).view(np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(np.asarray(idx, dtype=np.int64)):
                flat[i] = np.frombuffer(os.pread(fd, self.row_bytes, self.offset + int(row) * self.row_bytes), np.uint8)
        finally:
            os.close(fd)
        return out


@lru_cache(maxsize=4)
def _pool(data_dir: str) -> tuple[dict[str, Any], NpyRows, np.ndarray, np.ndarray, np.ndarray]:
    plan = read_plan(Path(data_dir))
    pool = Path(data_dir) / POOL_DIR
    return (plan, NpyRows(pool / "x.npy"), np.load(pool / "y.npy"), np.load(pool / "order.npy"),
            np.load(pool / "offsets.npy"))


def site_indices(data_dir: Path, site: int) -> np.ndarray:
    """Pool indices of virtual site number ``site``."""
    _, _, _, order, offsets = _pool(str(data_dir))
    if not 0 <= site < len(offsets) - 1:
        raise DataError(f"{data_dir}: no virtual site {site}; the plan has {len(offsets) - 1}")
    return np.asarray(order[offsets[site]:offsets[site + 1]])


def site_examples(data_dir: Path, site: int) -> BundledDataset:
    """Virtual site ``site``'s examples, read from the pool."""
    plan, x, y, _, _ = _pool(str(data_dir))
    idx = site_indices(data_dir, site)
    return BundledDataset(plan["dataset"], plan["task"], x.take(idx), y[idx], tuple(plan["feature_names"]),
                          plan["target"], dict(plan["site_config"]))


def materialize_site(data_dir: Path, site: int) -> Path:
    """The folder of virtual site ``site``, written (atomically) on first use."""
    from fedshield.simulations.split import write_site_folder

    plan = _pool(str(data_dir))[0]
    folder = Path(data_dir) / plan["names"][site]
    if folder.is_dir():
        return folder
    with _lock:
        if folder.is_dir():
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=data_dir))
        try:
            examples = site_examples(data_dir, site)
            write_site_folder(tmp / "site", examples, np.arange(len(examples.y)))
            try:
                os.rename(tmp / "site", folder)
            except OSError:  # another process (a second Ray actor) wrote it first: same content
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def has_plan(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a simulation's partition plan (sites are built from it lazily)."""
    return (Path(data_dir) / POOL_DIR / "plan.json").is_file()


@dataclass(frozen=True)
class VirtualSiteFolders:
    """The first ClientApp mod of a simulation: before a virtual site's message reaches the site's own
    code, its folder ``<data_dir>/site_NNNN`` (Flower's ``partition-id``) is written from the plan.

    A mod rather than a call from the ClientApp: the deployment ClientApp knows nothing of simulations,
    and the runner hands Ray's actors this object with the app (pickled by reference).
    """

    data_dir: str

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        partition = context.node_config.get("partition-id")
        if partition is not None and has_plan(Path(self.data_dir)):
            materialize_site(Path(self.data_dir), int(partition))
        return call_next(msg, context)
