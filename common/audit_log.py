"""An append-only audit log: JSON lines, each entry hash-chained to the one before and signed.

Layout of a folder with a log (a federation folder, a run folder, a site's state folder)::

    audit.jsonl       one entry a line: {"seq", "time", "event", <fields>, "prev", "hash", "sig"}
    audit.head.json   the last entry's seq and hash, signed: a log cut short is told from a complete one
    audit.pub         the public half of the signing key (hex), for ``fl-server audit verify``

``hash`` is the SHA-256 of the entry's canonical bytes (:func:`canonical`: sorted keys, no spaces, UTF-8)
without ``hash`` and ``sig``; ``prev`` is the previous entry's ``hash`` (64 zeros for entry 1); ``sig``
is the Ed25519 signature (:mod:`fedshield.common.audit_key`) of the hash, ``head``'s over its seq and hash.
So an entry cannot be edited, removed, reordered or added without the key, and with the per-entry
signatures :mod:`fedshield.common.audit_verify` names the first entry that was.

Several processes append to one log (a federation's: the SuperLink, the ServerApp, ``fl-server``
commands): each append holds an exclusive ``flock`` on the log from reading its last entry to writing the
head, writes the line in one ``write`` and fsyncs it, then replaces the head atomically.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.audit_key import load_key, public_hex, write_public
from fedshield.common.json_values import json_safe

LOG_FILE = "audit.jsonl"
HEAD_FILE = "audit.head.json"
HEAD_FORMAT = "fedshield-audit-head"
GENESIS = "0" * 64
RESERVED = frozenset({"seq", "time", "event", "prev", "hash", "sig"})
_TAIL_CHUNK = 64 * 1024


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: the entry without ``hash`` and ``sig``, sorted keys, no spaces."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical` bytes."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def entry_message(digest: str) -> bytes:
    """What an entry's signature signs."""
    return b"fedshield-audit-entry\0" + digest.encode("ascii")


def head_message(seq: int, digest: str) -> bytes:
    """What the head's signature signs."""
    return b"fedshield-audit-head\0" + str(seq).encode("ascii") + b"\0" + digest.encode("ascii")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _last_entry(fd: int) -> tuple[dict[str, Any] | None, bool]:
    """The last line of the open log that parses as an entry (None: none) and whether the file ends in a
    newline (False: the last write was torn by a crash)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, True
    ends_cleanly = os.pread(fd, 1, size - 1) == b"\n"
    end, tail = size, b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        lines = tail.split(b"\n")
        candidates = lines if end == 0 else lines[1:]  # the first piece may be a partial line
        for line in reversed(candidates):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("hash"), str):
                return entry, ends_cleanly
    return None, ends_cleanly


class AuditLog:
    """The audit log in ``folder``, signed with the Ed25519 key in ``key_file`` (it must exist:
    :func:`fedshield.common.audit_key.ensure_key`)."""

    def __init__(self, folder: Path, key_file: Path) -> None:
        self.folder = Path(folder)
        self.key_file = Path(key_file)
        self._key: Any = None

    @property
    def path(self) -> Path:
        return self.folder / LOG_FILE

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry (``fields``: JSON values; none may be named like the chain's own keys) and
        re-sign the head; the written entry."""
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are reserved")
        if self._key is None:
            self._key = load_key(self.key_file)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_public(self._key, self.folder)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last, ends_cleanly = _last_entry(fd)
            entry: dict[str, Any] = {"seq": (last["seq"] + 1) if last else 1, "time": _now(), "event": event,
                                     **json_safe(fields), "prev": last["hash"] if last else GENESIS}
            entry["hash"] = entry_hash(entry)
            entry["sig"] = self._key.sign(entry_message(entry["hash"])).hex()
            line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            os.write(fd, line if ends_cleanly else b"\n" + line)
            os.fsync(fd)
            atomic_write_json(self.folder / HEAD_FILE, {
                "format": HEAD_FORMAT, "seq": entry["seq"], "hash": entry["hash"], "public_key": public_hex(self._key),
                "sig": self._key.sign(head_message(entry["seq"], entry["hash"])).hex()})
        finally:
            os.close(fd)  # releases the lock
        return entry
