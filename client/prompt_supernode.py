"""Run Flower's SuperNode with short idle polls (``python -m fedshield.client.prompt_supernode ARGS``).

Flower 1.41's SuperNode loop (``flwr/supernode/start_client_internal.py``) sleeps a fixed 3 s when the
SuperLink has no message for it and 0.5 s while it waits for the ClientApp's reply; neither is
configurable. Every deployed round pays those sleeps for each message. This entry point swaps the
``time`` module *that one Flower module* sees for a proxy whose ``sleep`` is shorter, scopes the tracing
layer of the SuperNode's Runtime API to tracing runs (:func:`scope_runtime_tracing`), then starts
Flower's own ``flower-supernode`` CLI unchanged. Everything else in ``time`` is untouched.
A test pins this to the installed Flower version (tests/test_prompt_polling.py).
"""

from __future__ import annotations

import time as _time
from types import SimpleNamespace
from typing import Any

from fedshield.common.flower_env import exit_with_parent_from_env, silence_flower

IDLE_PULL_S = 0.25  # instead of 3 s: one small loopback/LAN request per interval per site
REPLY_WAIT_S = 0.05  # instead of 0.5 s


class _PromptTime(SimpleNamespace):
    """``time`` with shorter sleeps; every other attribute is the real module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        _time.sleep(IDLE_PULL_S if seconds >= 1.0 else min(seconds, REPLY_WAIT_S))


def patch_supernode_polling() -> None:
    """Install the prompt ``time`` into Flower's SuperNode loop module."""
    import flwr.supernode.start_client_internal as loop

    from fedshield.common import prompt_pulls

    loop.time = _PromptTime()  # type: ignore[attr-defined]
    prompt_pulls.install(loop)  # objects of a message still arriving from the SuperLink


def scope_runtime_tracing() -> None:
    """The SuperNode's Runtime API (what the site's executor polls) runs Flower's tracing layer only when
    tracing is on (:mod:`fedshield.common.scoped_middleware`)."""
    import flwr.supernode.main as supernode_app

    from fedshield.common.scoped_middleware import gated_factory

    supernode_app.RuntimeTracingMiddleware = gated_factory(supernode_app.RuntimeTracingMiddleware)  # type: ignore


def main() -> None:
    silence_flower()
    patch_supernode_polling()
    scope_runtime_tracing()
    exit_with_parent_from_env()  # end with `fl-client join`
    from flwr.supernode.cli import flower_supernode

    flower_supernode()


if __name__ == "__main__":
    main()
