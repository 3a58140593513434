"""Check an audit log (:mod:`fedshield.common.audit_log`) and name the first entry that was tampered with.

Entry N (the N-th line) must parse, hash to its ``hash``, carry a valid signature of that hash, have
``seq`` N and ``prev`` equal to entry N-1's hash; the signed head names the last entry, so a log cut
short is caught. The first failure is reported as:

* ``altered``: the line does not parse, its hash or signature does not match (edited without the key),
  or it does not follow entry N-1;
* ``removed``: entry N is nowhere in the file (the line holds a later entry, or the log ends before the
  entry the signed head names);
* ``reordered``: the line holds another entry, and entry N comes later in the file (or the line repeats an
  earlier entry).

Entries after the head, each validly signed, are a writer that stopped between its line and the head:
reported, not a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedshield.common.audit_key import PUBLIC_FILE, fingerprint, load_public, public_hex
from fedshield.common.audit_log import (
    GENESIS,
    HEAD_FILE,
    HEAD_FORMAT,
    LOG_FILE,
    entry_hash,
    entry_message,
    head_message,
)
from fedshield.common.errors import ConfigError


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_log` found. ``problem`` None: intact; else one line, ``bad_entry`` its entry
    number (None for a problem with the head or the key)."""

    path: Path
    entries: int
    key_fingerprint: str
    problem: str | None = None
    bad_entry: int | None = None
    beyond_head: int = 0
    events: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return self.problem is None


def _valid(raw: bytes, key: Ed25519PublicKey) -> tuple[dict[str, Any] | None, str]:
    """The entry on one line if it is intact by itself (parses, hash and signature match), else (None, why)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None, "not a JSON entry"
    if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or not isinstance(entry.get("hash"), str) \
            or not isinstance(entry.get("sig"), str) or not isinstance(entry.get("prev"), str):
        return None, "not an audit entry"
    try:
        if entry_hash(entry) != entry["hash"]:
            return None, "its content does not match its hash"
        key.verify(bytes.fromhex(entry["sig"]), entry_message(entry["hash"]))
    except (InvalidSignature, ValueError):
        return None, "its signature does not verify"
    return entry, ""


def _key_for(folder: Path, public_key: Path | None) -> Ed25519PublicKey:
    if public_key is not None:
        return load_public(public_key)
    if not (folder / PUBLIC_FILE).is_file():
        raise ConfigError(f"{folder / PUBLIC_FILE}: missing; pass the key the log was signed with (--public-key)")
    return load_public(folder / PUBLIC_FILE)


def verify_log(folder: Path, public_key: Path | None = None) -> AuditReport:
    """Check ``folder``'s ``audit.jsonl`` and ``audit.head.json`` against ``public_key`` (default the
    folder's ``audit.pub``). ``ConfigError`` when there is no log to check."""
    folder = Path(folder)
    path = folder / LOG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {LOG_FILE}; pass a federation folder, a run folder or a site's state folder")
    key = _key_for(folder, public_key)
    pub = public_hex(key)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    checked = [_valid(line, key) for line in lines]
    def report(problem: str | None = None, bad_entry: int | None = None, **found: Any) -> AuditReport:
        return AuditReport(path=path, entries=len(lines), key_fingerprint=fingerprint(pub), problem=problem,
                           bad_entry=bad_entry, **found)

    def bad(n: int, what: str) -> AuditReport:
        return report(f"entry {n}: {what}", n)

    prev = GENESIS
    for n, (entry, why) in enumerate(checked, start=1):
        if entry is None:
            return bad(n, f"altered ({why})")
        if entry["seq"] != n:
            later = next((k for k, (e, _) in enumerate(checked[n:], start=n + 1) if e and e["seq"] == n), None)
            if entry["seq"] < n:
                return bad(n, f"reordered (line {n} repeats entry {entry['seq']})")
            if later is not None:
                return bad(n, f"reordered (it is on line {later}; line {n} holds entry {entry['seq']})")
            return bad(n, f"removed (line {n} holds entry {entry['seq']})")
        if entry["prev"] != prev:
            return bad(n, f"altered (it does not follow entry {n - 1})")
        prev = entry["hash"]
    try:
        head = json.loads((folder / HEAD_FILE).read_text(encoding="utf-8"))
        seq, digest = int(head["seq"]), str(head["hash"])
        if head.get("format") != HEAD_FORMAT:
            raise ValueError("not an audit head")
    except FileNotFoundError:
        return report(f"{HEAD_FILE} is missing: the log's end cannot be "
                           "checked (entries may have been removed from the end)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return report(f"{HEAD_FILE} is unreadable ({exc})")
    if head.get("public_key") != pub:
        theirs = str(head.get("public_key"))
        named = fingerprint(theirs) if len(theirs) == 64 else "an unknown key"
        return report(f"{HEAD_FILE} names {named}, not the key checked "
                           f"against ({fingerprint(pub)})")
    try:
        key.verify(bytes.fromhex(str(head["sig"])), head_message(seq, digest))
    except (InvalidSignature, ValueError, KeyError):
        return report(f"{HEAD_FILE}: altered (its signature does not "
                           "verify)")
    if seq > len(lines):
        return bad(len(lines) + 1, f"removed (the signed head names entry {seq}; the log ends at entry {len(lines)})")
    if seq >= 1 and checked[seq - 1][0]["hash"] != digest:  # type: ignore[index]  # every line checked valid above
        return bad(seq, "altered (it differs from the entry the signed head names)")
    events = tuple(str(e["event"]) for e, _ in checked if e is not None)
    return report(beyond_head=len(lines) - seq, events=events)
