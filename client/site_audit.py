"""A site's own audit log, beside its privacy ledger: each release its data took part in, signed by the site.

The log is ``audit.jsonl`` in the site's state folder (the ledger's folder), signed with the site's audit
key ``audit.key`` there (Ed25519, 0600, made on first use), in the format of
:mod:`fedshield.common.audit_log`: ``counts released`` (the one-off noisy example counts), ``released``
(a training or evaluation reply: run, round, kind, what ran: steps, σ, q, statistics noise, and ε spent
after it, of the budget), ``release refused`` (a replayed round, a round past the budget). It is the
site's record of what left it, to compare with what the coordinator's run log says the site reported
(``fl-server audit verify STATE_DIR`` checks it). A simulation's virtual sites keep no such log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedshield.common.audit_key import KEY_FILE, ensure_key
from fedshield.common.audit_log import AuditLog


def site_audit_log(state_dir: Path) -> AuditLog:
    """The audit log of the site whose ledger is in ``state_dir`` (its key made on first use)."""
    ensure_key(Path(state_dir) / KEY_FILE)
    return AuditLog(Path(state_dir), Path(state_dir) / KEY_FILE)


def record_site_event(state_dir: Path, event: str, **fields: Any) -> None:
    """Append ``event`` to the site's audit log."""
    site_audit_log(state_dir).append(event, **fields)
