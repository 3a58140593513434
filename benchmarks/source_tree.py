"""Import FedShield from a source checkout that pip never installed (the lent GPU machine, docs/performance.md).

pyproject.toml maps the package ``fedshield.<name>`` to the repository's top-level folders
(``[tool.setuptools.package-dir]``) and declares the tasks as entry points, which the task registry reads
from the installed distribution's metadata. Without an install, :func:`ensure_fedshield` builds both in a
temporary folder: a ``fedshield`` package of symbolic links to those folders and a ``fedshield.dist-info``
with the entry points, puts the folder first on ``sys.path`` and on ``PYTHONPATH`` (FedShield's CLIs start
the SuperLink, SuperNodes and ClientApps as ``python -m fedshield...`` children), and removes it at exit.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path


def ensure_fedshield(root: Path) -> Path | None:
    """Make ``fedshield`` importable from ``root`` (the repository); the folder added to the paths, or None
    when FedShield is installed already."""
    if importlib.util.find_spec("fedshield") is not None:
        return None
    project = tomllib.loads((root / "pyproject.toml").read_text())
    shim = Path(tempfile.mkdtemp(prefix="fedshield-source-"))
    atexit.register(shutil.rmtree, shim, ignore_errors=True)
    package = shim / "fedshield"
    package.mkdir()
    for name, folder in project["tool"]["setuptools"]["package-dir"].items():
        (package / name.removeprefix("fedshield.")).symlink_to(root / folder, target_is_directory=True)
    meta = project["project"]
    info = shim / f"fedshield-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fedshield\nVersion: {meta['version']}\n")
    groups = {"console_scripts": meta.get("scripts", {}), **meta.get("entry-points", {})}
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items()) + "\n"
        for group, points in groups.items()))
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    importlib.invalidate_caches()
    return shim
