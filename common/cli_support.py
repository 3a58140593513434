"""Shared CLI behaviour: one-line errors with exit code 2, tracebacks only with ``--debug``.

Library code raises :class:`FedShieldError`; the three CLIs (``fl-server``, ``fl-client``, ``fl-sim``)
wrap their commands with :func:`guarded` so a user sees ``error: <what, where, fix>`` and a non-zero
exit code, never a traceback, unless they ask for one.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from fedshield.common.errors import FedShieldError

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

DEBUG_ENV = "FEDSHIELD_DEBUG"


def debug_enabled() -> bool:
    """Whether ``--debug`` (or ``FEDSHIELD_DEBUG``) asked for tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def set_debug(enabled: bool) -> None:
    """Turn on tracebacks and debug logging (also in child processes) when ``enabled``; set the log format."""
    if enabled:
        os.environ[DEBUG_ENV] = "1"
    logging.basicConfig(level=logging.DEBUG if enabled else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def guarded(fn: F) -> F:
    """Turn ``FedShieldError`` (and Ctrl-C) into a one-line message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedShieldError as exc:
            if debug_enabled():
                raise
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: stopped everything this command started")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]  # the wrapper keeps the command's signature (functools.wraps)


def warn_loudly(message: str) -> None:
    """A warning a user cannot miss (``--insecure``, ``--no-dp``)."""
    err_console.print(f"[bold yellow on red] WARNING [/] [bold yellow]{message}[/]", soft_wrap=True)



def print_tasks(catalogue: list[tuple[str, bool, str, str, tuple[str, ...]]]) -> None:
    """`fl-sim tasks` / `fl-server tasks`: each installed task (name, built-in?, summary, data format,
    metrics; :func:`fedshield.tasks.registry.task_catalogue`), plugins marked."""
    for name, builtin, summary, data_format, metrics in catalogue:
        origin = "" if builtin else " \\[plugin]"  # escaped: rich markup
        console.print(f"[bold]{name}[/]{origin}: {summary}")
        console.print(f"  data: {data_format}")
        console.print(f"  metrics: {', '.join(metrics)}")


def model_note(given: str, resolved: str) -> str:
    """``", model gabor (auto)"`` for a run's start line; empty while the task resolves ``auto`` itself."""
    if resolved == "auto":
        return ""
    return f", model {resolved}" + (" (auto)" if given == "auto" else "")


def print_json(doc: Any) -> None:
    """``--json``: ``doc`` as strict JSON (non-finite numbers as null) on stdout, and nothing else there."""
    import json
    import sys

    from fedshield.common.json_values import json_safe

    sys.stdout.write(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()
