"""Read and validate a text site: one CSV with a header and the columns ``text`` and ``label``.

Labels are class names from the site's ``fedshield.toml`` ``labels`` (in index order) or, without
it, integers 0…``classes``−1 (``classes`` default 2). Every row is checked: empty text, a label
outside the label set, a text longer than ``max_length`` tokens — one line naming file, row and fix.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.common.errors import DataError
from fedshield.tasks.hashing_tokenizer import token_count


def text_label_set(extra: dict[str, Any]) -> tuple[str, ...]:
    """Class names: ``labels`` from fedshield.toml, else ``"0"`` … ``classes - 1`` (default 2 classes)."""
    labels = extra.get("labels")
    if isinstance(labels, list) and labels:
        return tuple(str(n) for n in labels)
    classes = int(extra.get("classes", 2))
    return tuple(str(i) for i in range(classes))


def find_csv(folder: Path, extra: dict[str, object]) -> Path:
    """The site's CSV: ``file`` from fedshield.toml, or the only ``*.csv`` in the folder."""
    if "file" in extra:
        path = folder / str(extra["file"])
        if not path.is_file():
            raise DataError(f"{path}: the file fedshield.toml names does not exist; fix `file = ...`")
        return path
    found = sorted(folder.glob("*.csv"))
    if len(found) != 1:
        what = "no CSV" if not found else f"{len(found)} CSV files"
        raise DataError(f"{folder}: {what}; put one CSV with columns text,label there (or name it with file = ...)")
    return found[0]


def read_text_csv(path: Path, *, labels: tuple[str, ...], max_length: int) -> tuple[list[str], np.ndarray]:
    """(texts, y): y (N,) int64 indices into ``labels``."""
    index = {name: i for i, name in enumerate(labels)}
    texts: list[str] = []
    ys: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["text", "label"] or len(header) != 2:
                raise DataError(f"{path}:1: header is {header!r}; the columns must be exactly text,label")
            for row_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"{path}:{row_no}: {len(row)} fields; a row is text,label (quote texts with "
                                    "commas)")
                text, label = row[0].strip(), row[1].strip()
                if not text:
                    raise DataError(f"{path}:{row_no}: empty text; remove the row or fill it in")
                if label not in index:
                    raise DataError(f"{path}:{row_no}: label {label!r} is not in the task's label set "
                                    f"({', '.join(labels)}); fix the row or set labels = [...] in fedshield.toml")
                if token_count(text) > max_length:
                    raise DataError(f"{path}:{row_no}: text has {token_count(text)} tokens, more than max_length "
                                    f"{max_length}; shorten it or raise max_length in fedshield.toml "
                                    "(every site alike)")
                texts.append(text)
                ys.append(index[label])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); check its quoting") from None
    if not texts:
        raise DataError(f"{path}: no rows; a site needs at least 2 examples")
    return texts, np.asarray(ys, dtype=np.int64)
