"""A privacy ledger that disappears or rolls back is noticed, never silently restarted from ε 0.

A ledger only grows: every release adds an entry, and a retry replaces a pending entry one for one.
So each save also writes an *anchor*, a small record of how many entries the ledger holds and the ε
they spent, in two places:

- beside the ledger in the state folder (``privacy-ledger.anchor.json``): catches a ledger file
  deleted or replaced by an older backup;
- in the site's data folder (``.fedshield-ledger-anchor.json``), where it is writable: catches a whole
  state folder deleted, or the same data joined with a fresh ``--state-dir``.

At every open, a ledger with fewer entries than an anchor records is refused with one line naming
both files. A ledger with as many or more (a crash between the ledger's write and the anchor's, or a
state folder moved and pointed at) is accepted and the anchors move forward. The only way back to
ε 0 is deliberate: an administrator deletes the anchor, which the refusal names.

What this does not stop: someone who deletes the ledger and both anchors. The ledger protects the
site against a mistaken operator or a careless restore, not against its own administrator.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.errors import ConfigError

ANCHOR_FORMAT = "fedshield-ledger-anchor"
STATE_ANCHOR = "privacy-ledger.anchor.json"
DATA_ANCHOR = ".fedshield-ledger-anchor.json"


@dataclass(frozen=True)
class Anchor:
    """What a ledger held when it was last saved: ``entries`` releases spending ``epsilon`` in ``ledger``."""

    path: Path
    ledger: str
    entries: int
    epsilon: float


def anchor_paths(state_dir: Path, data_dir: Path | None) -> list[Path]:
    """Where a ledger in ``state_dir`` keeps its anchors (the data folder's only when one is given)."""
    paths = [Path(state_dir) / STATE_ANCHOR]
    if data_dir is not None:
        paths.append(Path(data_dir) / DATA_ANCHOR)
    return paths


def read_anchor(path: Path) -> Anchor | None:
    """The anchor at ``path``; None when there is none. A damaged anchor is refused (it cannot vouch)."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != ANCHOR_FORMAT:
            raise ValueError("not a FedShield ledger anchor")
        entries, epsilon = raw["entries"], float(raw["epsilon"])
        if not isinstance(entries, int) or entries < 0 or not math.isfinite(epsilon) or epsilon < 0:
            raise ValueError("entries or epsilon out of range")
        return Anchor(path, str(raw["ledger"]), entries, epsilon)
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: privacy ledger anchor is damaged ({exc}); restore it from backup, or delete it "
                          "if the ledger beside it is known to be complete") from None


def check_anchors(ledger_path: Path, entries: int, paths: list[Path]) -> None:
    """Refuse a ledger at ``ledger_path`` holding ``entries`` entries if an anchor says it held more."""
    for path in paths:
        anchor = read_anchor(path)
        if anchor is None or entries >= anchor.entries:
            continue
        now = "is missing" if entries == 0 and not ledger_path.exists() else f"holds {entries} release(s)"
        raise ConfigError(
            f"{ledger_path}: privacy ledger {now}, but {path} records {anchor.entries} release(s) spending ε "
            f"{anchor.epsilon:.3g} in {anchor.ledger}; restore that ledger (or pass its folder as --state-dir). "
            f"Only if it is truly lost, delete {path} to start again at ε 0, knowing that this forgets spent privacy"
        )


def write_anchors(ledger_path: Path, entries: int, epsilon: float, paths: list[Path]) -> None:
    """Record the saved ledger's size in every anchor (owner-only); a read-only data folder keeps none."""
    doc = {"format": ANCHOR_FORMAT, "ledger": str(Path(ledger_path).resolve()), "entries": entries,
           "epsilon": epsilon}
    for i, path in enumerate(paths):
        if i > 0 and not os.access(path.parent, os.W_OK):
            continue  # a data folder mounted read-only: the state folder's anchor still guards the file
        atomic_write_json(path, doc, mode=0o600)
