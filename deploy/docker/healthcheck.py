"""The image's HEALTHCHECK: exit 0 while this container's FedShield process does its job, 1 otherwise.

- Coordinator (``fl-server start``): its SuperLink answers ``GET /health`` on the port sites connect to,
  over TLS verified against the federation CA it was started with (the address is the container's own,
  so the certificate's chain is checked, not its name).
- Site (``fl-client join``): its SuperNode process runs (``fl-client join`` restarts one that stopped;
  a site has no port to probe, it only connects out).

Read from the processes' own command lines in /proc, so the check needs no configuration of its own.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

SUPERLINK = "fedshield.flower_ext.superlink_main"
SUPERNODE = "fedshield.flower_ext.supernode_main"


def command_lines() -> list[list[str]]:
    """The argument vectors of every process this container can see."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:  # the process ended meanwhile
                continue
            if raw:
                found.append(raw.rstrip(b"\0").decode(errors="replace").split("\0"))
    return found


def flag(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv``, if any."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def superlink_answers(argv: list[str]) -> bool:
    """Whether the SuperLink started with ``argv`` answers ``/health`` on its own port."""
    host = flag(argv, "--host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    ca = flag(argv, "--ssl-ca-certfile")
    context = None
    if ca is not None:
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False
    url = f"{'https' if ca else 'http'}://{host}:{flag(argv, '--port') or '9092'}/health"
    try:
        with urllib.request.urlopen(url, timeout=3.0, context=context) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    """0 when this container's coordinator or site is healthy, 1 otherwise."""
    argvs = command_lines()
    superlinks = [argv for argv in argvs if SUPERLINK in argv]
    if superlinks:
        return 0 if superlink_answers(superlinks[0]) else 1
    return 0 if any(SUPERNODE in argv for argv in argvs) else 1


if __name__ == "__main__":
    sys.exit(main())
