"""Validate a site folder before connecting: resolve its task, load and check every example.

A site should learn that its data is wrong in its own terminal, before it joins anything, with one
line naming the file, the row and the fix.
"""

from __future__ import annotations

from pathlib import Path

from fedshield.client.site_folder import check_folder
from fedshield.common.errors import DataError
from fedshield.tasks.base import SiteData, TaskOptions
from fedshield.tasks.registry import get_task
from fedshield.tasks.site_config import site_options


def _colour_images(folder: Path) -> bool:
    """Whether the folder's images are colour: x of data.npz is N×H×W×3, or the first image is RGB."""
    try:
        if (folder / "data.npz").is_file():
            import numpy as np

            with np.load(folder / "data.npz", allow_pickle=False) as npz:
                return "x" in npz.files and npz["x"].ndim == 4
        first = next((p for p in sorted((folder / "images").rglob("*")) if p.is_file()), None)
        if first is None:
            return False
        from PIL import Image

        with Image.open(first) as img:
            return img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr")
    except Exception:  # unreadable: let the task's own loader say what is wrong
        return False


def infer_task(folder: Path) -> str | None:
    """Guess the task from the folder's contents when neither --task nor fedshield.toml names it."""
    if (folder / "data.npz").is_file() or (folder / "images").is_dir():
        return "cifar-cnn" if _colour_images(folder) else "digits-cnn"
    if sorted(folder.glob("*.tsv")):
        return "seq2seq-attention"
    csvs = sorted(folder.glob("*.csv"))
    if csvs:
        return "text-transformer" if _header(csvs[0]) == ["text", "label"] else "tabular"
    return None


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [h.strip().lower() for h in fh.readline().split(",")]
    except OSError:
        return []


def check_site(folder: Path, *, task: str | None, overrides: dict[str, object],
               private: bool = True) -> tuple[str, TaskOptions, SiteData]:
    """Return (task name, options, validated data) for the site folder, or raise a one-line error.

    ``private``: the site trains under DP (what the task may derive from the data, :class:`TaskOptions`).
    """
    folder = Path(folder)
    check_folder(folder)
    toml_task, options = site_options(folder, overrides)
    options.private = private
    name = task or toml_task or infer_task(folder)
    if name is None:
        raise DataError(f"--data {folder}: cannot tell which task this data is for; add `task = \"...\"` to "
                        f"{folder / 'fedshield.toml'} or pass --task")
    data = get_task(name).load_site(folder, options)
    return name, options, data
