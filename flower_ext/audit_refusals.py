"""The SuperLink's refusals, into the federation's audit log: a stranger's Control request (a foreign
``flwr run``), a Runtime request from another host, a site key the SuperLink does not know.

``fl-server start --dir`` names the log's folder and key in ``$FEDSHIELD_AUDIT_DIR`` and
``$FEDSHIELD_AUDIT_KEY_FILE``; without them (``--insecure``, tests of the door alone) nothing is written.
The guard (:mod:`fedshield.flower_ext.control_guard`) and the activation handler
(:mod:`fedshield.flower_ext.node_activation`) call :func:`record`.

Anyone can make the SuperLink refuse them, so the log is not theirs to fill: one refusal of a kind (the
event and who, the peer address or the key) is written at most once every :data:`WINDOW_S` seconds, and
at most :data:`BUDGET` refusals of any kind a window; each written entry says how many like it were not
written since (``repeats``). Writing happens off the event loop.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fedshield.common.audit_log import AuditLog

AUDIT_DIR_ENV = "FEDSHIELD_AUDIT_DIR"
AUDIT_KEY_ENV = "FEDSHIELD_AUDIT_KEY_FILE"
WINDOW_S = 60.0
BUDGET = 30
_MAX_KINDS = 4096


class RefusalLog:
    """Rate-limited appends of refusals to one audit log."""

    def __init__(self, log: AuditLog, window_s: float = WINDOW_S, budget: int = BUDGET) -> None:
        self.log = log
        self.window_s, self.budget = window_s, budget
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._repeats: dict[tuple[str, str], int] = {}
        self._window_start, self._written = 0.0, 0

    def admit(self, event: str, who: str, now: float) -> int | None:
        """The repeats to report if this refusal is written now, None if it is only counted."""
        kind = (event, who)
        with self._lock:
            if now - self._window_start >= self.window_s:
                self._window_start, self._written = now, 0
            if now - self._last.get(kind, -self.window_s) < self.window_s or self._written >= self.budget:
                self._repeats[kind] = self._repeats.get(kind, 0) + 1
                return None
            if len(self._last) >= _MAX_KINDS:
                self._last.clear()
            self._last[kind] = now
            self._written += 1
            return self._repeats.pop(kind, 0)

    def record(self, event: str, who: str, **fields: Any) -> None:
        """Write ``event`` (rate-limited) from a background thread."""
        repeats = self.admit(event, who, time.monotonic())
        if repeats is None:
            return
        threading.Thread(target=self._write, args=(event, {**fields, "repeats": repeats}), daemon=True).start()

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        try:
            self.log.append(event, **fields)
        except Exception as exc:  # noqa: BLE001  # the SuperLink serves on; the failure is in its log
            print(f"FedShield audit: could not write {event!r} to {self.log.path}: {exc}", file=sys.stderr,
                  flush=True)


_active: RefusalLog | None = None


def install() -> None:
    """In the SuperLink's process: refusals go to the log ``$FEDSHIELD_AUDIT_DIR`` names, if any."""
    global _active
    folder, key = os.environ.get(AUDIT_DIR_ENV), os.environ.get(AUDIT_KEY_ENV)
    _active = RefusalLog(AuditLog(Path(folder), Path(key))) if folder and key else None


def record(event: str, who: str, **fields: Any) -> None:
    """Record a refusal (``who``: the peer or key it is about) if the SuperLink has an audit log."""
    if _active is not None:
        _active.record(event, who, **fields)
