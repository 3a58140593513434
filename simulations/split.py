"""Write site folders from a bundled data set, in the documented site formats.

Image sites get ``data.npz`` (x N×28×28 or N×32×32×3 uint8, y N int64); tabular sites get
``data.csv`` with a header; text sites ``data.csv`` with the columns ``text,label``. Each folder also
gets a ``fedshield.toml`` naming its task (and target, kind, classes, feature ranges). The whole output is
written into a temporary folder beside ``out`` and renamed into place, so an interrupted split leaves
nothing half-written.
"""

from __future__ import annotations

import csv
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np

from fedshield.common.errors import ConfigError
from fedshield.simulations.datasets import BundledDataset, load_dataset
from fedshield.simulations.partition import PartitionSpec, make_partition


def site_names(n: int) -> list[str]:
    """hospital_a, hospital_b, ... for up to 26 sites; site_0000, site_0001, ... beyond."""
    if n <= 26:
        return [f"hospital_{c}" for c in string.ascii_lowercase[:n]]
    return [f"site_{i:04d}" for i in range(n)]


def _toml(values: dict[str, object]) -> str:
    import tomli_w

    return tomli_w.dumps(values)


def write_site_folder(folder: Path, data: BundledDataset, idx: np.ndarray) -> None:
    """Write examples ``idx`` of ``data`` as one site folder (the documented format of its task)."""
    folder.mkdir(parents=True)
    if data.x.ndim >= 3:  # images
        np.savez(folder / "data.npz", x=data.x[idx], y=data.y[idx])
    elif data.x.dtype.kind == "U" and data.x.ndim == 2:  # translation pairs: source<TAB>target, no header
        with open(folder / "data.tsv", "w", encoding="utf-8") as fh:
            fh.writelines(f"{source}\t{target}\n" for source, target in data.x[idx])
    elif data.x.dtype.kind == "U":  # texts: text,label with the class names of the site's fedshield.toml
        names = data.site_config["labels"]
        assert isinstance(names, list)  # the text data sets name their classes
        with open(folder / "data.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows((str(text), names[int(label)])
                             for text, label in zip(data.x[idx], data.y[idx], strict=True))
    else:
        with open(folder / "data.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*data.feature_names, data.target])
            for row, target in zip(data.x[idx], data.y[idx], strict=True):
                label = int(target) if data.is_classification else f"{target:.6g}"
                writer.writerow([*(f"{v:.6g}" for v in row), label])
    (folder / "fedshield.toml").write_text(_toml({"task": data.task, **data.site_config}))


def write_sites(dataset: str, sites: int, out: Path, *, dirichlet: float | None, seed: int,
                names: list[str] | None = None, spec: PartitionSpec | None = None) -> list[Path]:
    """Partition ``dataset`` into ``sites`` folders under ``out``; return their paths."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not empty; pass a new folder")
    labels = list(names) if names is not None else site_names(sites)
    if len(labels) != sites or len(set(labels)) != sites:
        raise ConfigError(f"{len(labels)} site names for --sites {sites}; give one distinct name per site")
    bad = [n for n in labels if not n or n.startswith(".") or "/" in n or "\\" in n]
    if bad:
        raise ConfigError(f"site name {bad[0]!r} is not a plain folder name; use letters, digits, - or _")
    data = load_dataset(dataset)
    if spec is None:
        spec = PartitionSpec("dirichlet", alpha=dirichlet) if dirichlet is not None else PartitionSpec()
    parts = make_partition(data.y, sites, spec, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, idx in zip(labels, parts, strict=True):
            write_site_folder(tmp / name, data, idx)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in labels]
