"""The first check of a site's ``--data`` folder: it exists, is a folder and holds something.

Kept apart from :mod:`fedshield.client.site_check` (which loads the data with the task, and so imports
torch) so that ``fl-client join`` rejects a mistyped folder in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

from fedshield.common.errors import DataError


def check_folder(folder: Path) -> None:
    """Raise a one-line :class:`DataError` unless ``folder`` is a non-empty folder (no data is read)."""
    if not folder.exists():
        raise DataError(f"--data {folder}: folder does not exist; pass the site's data folder")
    if not folder.is_dir():
        raise DataError(f"--data {folder}: not a folder; pass the folder that holds the site's data")
    if not any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise DataError(f"--data {folder}: folder is empty; put data.npz, images/<label>/*.png or a CSV in it")
