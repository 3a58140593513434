"""``fl-server status --dir``: a federation's sites and certificate lifetimes, as one document.

The text output and ``--json`` are both rendered from :func:`federation_status`, so they say the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fedshield.common import pki
from fedshield.server.federation import Federation


def federation_status(fed: Federation, now: dt.datetime | None = None) -> dict[str, Any]:
    """The federation's name, id, address, CA and server certificate validity (dates UTC, ISO; ``error`` for an
    unreadable one), each site's status and since when, and the certificate warnings."""
    certificates: dict[str, dict[str, Any]] = {}
    for label, path in (("CA", fed.ca_cert), ("server certificate", fed.server_cert)):
        try:
            v = pki.validity(pki.load_cert(path))
            certificates[label] = {"path": str(path), "not_before": v.not_before.date().isoformat(),
                                   "not_after": v.not_after.date().isoformat(), "days_left": round(v.days_left(now))}
        except (OSError, ValueError) as exc:
            certificates[label] = {"path": str(path), "error": str(exc)}
    sites = {name: {"status": entry.get("status"),
                    "since": entry.get("revoked") if entry.get("status") == "revoked" else entry.get("added")}
             for name, entry in sorted(fed.sites.items())}
    return {"federation": fed.name, "id": fed.id, "server": fed.address, "certificates": certificates,
            "sites": sites, "warnings": fed.certificate_warnings(now)}
