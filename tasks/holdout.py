"""A site's held-out validation split, decided record by record so that adding a record moves no other.

Each record goes to validation when a keyed hash of its own content falls below ``val_fraction``
(``u = BLAKE2b_seed(record) / 2**64``, uniform on [0, 1) for distinct records). Whether a record is held
out therefore depends on that record and the seed alone, never on which other records the site holds:
adding or removing one record changes the training split by at most that record. That is the
add/remove-one adjacency DP-SGD's guarantee is stated for; a shuffled split (the former
``train_test_split``) moved other records between the splits whenever N changed (one added record
moved 16 of 177 training records into validation), so "one record's influence" no longer meant one.

The split is not stratified (stratifying needs every record's label at once); with the default 20 %
the validation share of each class is close to 20 % for classes of more than a few dozen examples.
Identical records share a hash and so always share a split.

Degenerate sites: when no record falls below the threshold (or all do), which happens only for very
small sites (n = 10 at 20 %: probability 0.11), the record with the smallest (largest) hash is moved so
that each side has one; only then can an added record move another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedshield.common.errors import DataError

_DIGEST_BYTES = 8


def _record_bytes(column: np.ndarray | Sequence[object], i: int) -> bytes:
    """One record's content in ``column``: its array row, or its text encoded as UTF-8.

    Text is encoded element by element: a NumPy unicode array pads every element to the longest one,
    so a row's raw bytes would change when a longer text is added.
    """
    value = column[i]
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).tobytes()
    if isinstance(value, (str, np.str_)):
        return str(value).encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return np.asarray(value).tobytes()


def record_hashes(*columns: np.ndarray | Sequence[object], seed: int) -> np.ndarray:
    """(N,) float64 in [0, 1): each record's keyed BLAKE2b hash of its values in every column.

    ``columns``: arrays or sequences whose first axis indexes the records (features, labels, texts).
    """
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("every column must hold one entry per record")
    key = f"fedshield-holdout/{int(seed)}".encode()
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        digest = hashlib.blake2b(key=key, digest_size=_DIGEST_BYTES)
        for column in columns:
            part = _record_bytes(column, i)
            digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two splits of a record collide
            digest.update(part)
        out[i] = int.from_bytes(digest.digest(), "little") / float(1 << (8 * _DIGEST_BYTES))
    return out


def holdout_indices(*columns: np.ndarray | Sequence[object], val_fraction: float, seed: int,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted index arrays: record i is held out when its hash is below ``val_fraction``.

    ``columns``: the records' content (e.g. ``x, y``); ``seed``: keys the hash (the site's or run's
    seed); ``where``: the file or folder named in errors.
    """
    n = len(columns[0]) if columns else 0
    if n < 2:
        raise DataError(f"{where}: only {n} example(s); a site needs at least 2 (one to train, one to validate)")
    u = record_hashes(*columns, seed=seed)
    held = u < val_fraction
    if not held.any():  # tiny site: one record to validate, the lowest hash
        held[np.argmin(u)] = True
    if held.all():  # tiny site: one record to train on, the highest hash
        held[np.argmax(u)] = False
    return np.flatnonzero(~held), np.flatnonzero(held)
