"""Style is enforced, not hoped for: ruff over the repository and mypy over the package, as configured in
pyproject.toml (the suppressions that remain there and in the code each say why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "flower_ext", "tasks", "strategies", "client", "server", "simulations")


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing_in_the_package(tmp_path: Path) -> None:
    """mypy checks ``fedshield.*`` as users import it. The top-level folders are mapped to ``fedshield.<name>``
    by pyproject.toml's package-dir, which mypy cannot follow through setuptools' editable-install hook,
    so the package is laid out for it as links under a ``fedshield/`` folder."""
    package = tmp_path / "fedshield"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in PACKAGES:
        (package / name).symlink_to(ROOT / name, target_is_directory=True)
    cache = ROOT / ".mypy_cache"
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(cache), "-p", "fedshield"], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    if "error:" not in proc.stdout and proc.returncode != 0:
        pytest.fail(f"mypy did not run: {proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, proc.stdout.replace(str(tmp_path) + "/", "")
