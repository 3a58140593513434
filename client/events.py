"""Site events: what the ClientApp did, appended as JSON lines for ``fl-client join`` to show.

The ClientApp runs in a process the SuperNode starts, so it cannot print to the user's terminal; it
appends one JSON object per line to the file named by ``node_config["events-file"]`` (set by
``fl-client join``), which tails it. Lines are small and written with ``O_APPEND`` in one call, so a
reader never sees half a line from a concurrent writer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def emit(events_file: str | None, event: str, **fields: Any) -> None:
    """Append ``{"t": now, "event": event, **fields}``; no-op without an events file."""
    if not events_file:
        return
    line = json.dumps({"t": time.time(), "event": event, **fields}, default=str) + "\n"
    fd = os.open(events_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete lines after byte ``offset``, and the offset after the last complete line."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for raw in chunk[: end + 1].splitlines():
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return events, offset + end + 1
