"""What a run writes to the audit logs: its run folder's, and its federation's (:mod:`fedshield.common.audit_log`).

Two writers share a run's logs: ``fl-server start`` (run submitted, resumed, finished / failed / stopped)
and the ServerApp it submits (sites connected and refused at the handshake, each round's participants
and what each site reported it spent). ``fl-server start`` tells the ServerApp where the logs are and
which key signs them in ``RUN_DIR/.audit-target.json`` (0600), so nothing about them travels in the
run's config, which Flower hands to the sites. A simulation writes no such file and no audit log.

Events about the federation (site enrolled, revoked, refused by the SuperLink, a foreign ``flwr run``)
are written by :class:`fedshield.server.federation.Federation` and by the SuperLink's door
(:mod:`fedshield.flower_ext.audit_refusals`).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.audit_key import KEY_FILE, ensure_key
from fedshield.common.audit_log import AuditLog

TARGET_FILE = ".audit-target.json"


def operator() -> str:
    """Who acts, as this host knows them: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class RunAudit:
    """The audit logs of one run: ``run`` (``RUN_DIR/audit.jsonl``) and the federation's (None: ``--insecure``)."""

    run_dir: Path
    run: AuditLog
    federation: AuditLog | None

    @classmethod
    def for_coordinator(cls, run_dir: Path, federation: AuditLog | None) -> RunAudit:
        """The logs of a run ``fl-server start`` is about to submit; tells the ServerApp (:data:`TARGET_FILE`).
        Without a federation the run is signed with a key of its own, ``RUN_DIR/audit.key`` (0600)."""
        key = federation.key_file if federation is not None else run_dir / KEY_FILE
        ensure_key(key)
        atomic_write_json(run_dir / TARGET_FILE, {"key": str(key), "federation": str(federation.folder)
                                                  if federation is not None else None}, mode=0o600)
        return cls(run_dir, AuditLog(run_dir, key), federation)

    @classmethod
    def for_server_app(cls, run_dir: Path | None) -> RunAudit | None:
        """The logs ``fl-server start`` named for this run, or None (a simulation, no run folder)."""
        if run_dir is None or not (Path(run_dir) / TARGET_FILE).is_file():
            return None
        target = json.loads((Path(run_dir) / TARGET_FILE).read_text(encoding="utf-8"))
        key = Path(target["key"])
        fed = AuditLog(Path(target["federation"]), key) if target.get("federation") else None
        return cls(Path(run_dir), AuditLog(Path(run_dir), key), fed)

    def record(self, event: str, *, federation_too: bool = True, **fields: Any) -> None:
        """Append ``event`` to the run's log and, with ``federation_too``, to the federation's (naming the run)."""
        self.run.append(event, **fields)
        if federation_too and self.federation is not None:
            self.federation.append(event, run_dir=str(self.run_dir), **fields)

    # -- the ServerApp's events ----------------------------------------------------------------------
    def sites_joined(self, connected: list[str], refused: dict[str, str]) -> None:
        """The handshake's outcome: each site taking part, each refused with its reason."""
        for site in connected:
            self.record("site connected", site=site)
        for site, reason in refused.items():
            self.record("site refused", site=site, reason=reason)

    def round_trained(self, rnd: int, sampled: int, sites: dict[str, dict[str, Any]],
                      failures: list[dict[str, Any]]) -> None:
        """A training round (run log only): its participants and what each reported it spent (ε, δ: the
        site's own accounting of its whole ledger after the round; none where the site trained without DP)."""
        spent = {site: {k: m[k] for k in ("epsilon", "delta") if m.get(k) is not None} for site, m in sites.items()}
        self.record("round", federation_too=False, round=rnd, sampled=sampled, participants=sorted(sites),
                    spent=spent, failed={str(f["site"]): str(f["reason"]) for f in failures})
