"""The SuperNode's adaptations: short idle polls, a wake-up for the site's executor, scoped middleware.

Flower 1.41 and 1.42's SuperNode loop (``flwr/supernode/start_client_internal.py``) sleeps a fixed 3 s when the
SuperLink has no message for it and 0.5 s while it waits for the ClientApp's reply; neither is
configurable. Every deployed round pays those sleeps for each message. :func:`install` swaps the
``time`` module *that one Flower module* sees for a proxy whose ``sleep`` is shorter (idle pulls back off
from 0.05 to 0.25 s), wakes the site's warm executor as soon as a message is stored
(:mod:`fedshield.flower_ext.executor_wake`), and scopes the layers of the SuperNode's Runtime API that act
only on some requests (:func:`scope_runtime_layers`). Everything else in ``time`` is untouched.
A test pins this to the installed Flower version (tests/test_prompt_polling.py).
"""

from __future__ import annotations

import time as _time
from types import SimpleNamespace
from typing import Any

from fedshield.common.backoff import Backoff
from fedshield.flower_ext import prompt_pulls
from fedshield.flower_ext.executor_wake import WakeNotifier
from fedshield.flower_ext.scoped_middleware import gated_factory
from fedshield.flower_ext.version_check import check_flower_version, rebinding_point

# Idle pulls, instead of Flower's fixed 3 s: 0.05 s right after a message (the next message of a round
# often follows at once: evaluate after train, the next SecAgg+ stage for the last site to answer),
# then 1.5x longer per empty pull up to 0.25 s. Not longer: a round's next exchange starts only when
# the slowest of its sites has re-polled, so the cap is paid once per exchange (a 0.5 s cap made a
# 20-site SecAgg+ round slower, docs/performance.md), while each pull is a signed TLS request costing the SuperLink
# ~4 ms of CPU on a shared host.
IDLE_PULL_S = 0.05
IDLE_PULL_GROWTH = 1.5
IDLE_PULL_CAP_S = 0.25
REPLY_WAIT_S = 0.05  # instead of 0.5 s
# A FedShield SuperLink holds an empty pull until a message arrives or 2 s pass
# (flower_ext/held_pulls.py). A pull that took this long was held: the SuperLink itself paces the polls,
# so the next one goes out after the shortest pause, and a message pushed during the pause waits at most
# IDLE_PULL_S, not the cap. Against a SuperLink that answers at once, the backoff above still applies.
HELD_PULL_S = 1.0
#: Middleware classes ``flwr/supernode/main.py`` adds to the SuperNode's Runtime API by these names that act
#: on some requests only; each is gated as the SuperLink's same layer is
#: (:data:`fedshield.flower_ext.scoped_middleware.SCOPES`). None in Flower 1.42, which dropped the one 1.41
#: had (``RuntimeTracingMiddleware``, active only with tracing on); tests/test_scoped_middleware.py checks
#: that the SuperNode carries no ungated layer the SuperLink scopes.
SCOPED_LAYERS: tuple[str, ...] = ()


class IdleBackoff(Backoff):
    """The interval of the next idle pull (s): ``IDLE_PULL_S`` after a message, growing to ``IDLE_PULL_CAP_S``."""

    def __init__(self) -> None:
        super().__init__(IDLE_PULL_S, IDLE_PULL_CAP_S, IDLE_PULL_GROWTH)

    def wait(self) -> None:
        _time.sleep(self.interval)
        self.grow()


class _PromptTime(SimpleNamespace):
    """``time`` with shorter sleeps; every other attribute is the real module's."""

    def __init__(self, backoff: IdleBackoff) -> None:
        super().__init__()
        self._backoff = backoff

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        if seconds >= 1.0:  # Flower's "no message" sleep
            self._backoff.wait()
        else:
            _time.sleep(min(seconds, REPLY_WAIT_S))


def patch_supernode_polling() -> None:
    """Install the prompt ``time`` into Flower's SuperNode loop module, and restart the idle backoff at
    its shortest whenever the loop has pulled a message."""
    import flwr.supernode.start_client_internal as loop

    rebinding_point(loop, "time", "shortens the SuperNode's fixed sleeps")
    stored = rebinding_point(loop, "_pull_and_store_message", "wakes the executor when a message is stored")
    backoff = IdleBackoff()
    executor = WakeNotifier.from_env()  # None without a warm executor
    loop.time = _PromptTime(backoff)  # type: ignore[assignment]  # Flower's loop module reads time.time(); a stand-in
    pull = getattr(stored, "__wrapped__", stored)

    def pull_and_note(*args: Any, **kwargs: Any) -> Any:
        started = _time.monotonic()
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a message and its task are stored
            backoff.reset()
            if executor is not None:
                executor.notify()
        elif _time.monotonic() - started >= HELD_PULL_S:
            backoff.reset()
        return run_id

    pull_and_note.__wrapped__ = pull  # type: ignore[attr-defined]  # patching twice wraps Flower's once
    loop._pull_and_store_message = pull_and_note
    prompt_pulls.install(loop, "pull_objects")  # objects of a message still arriving from the SuperLink


def scope_runtime_layers() -> None:
    """The SuperNode's Runtime API (what the site's executor polls) runs each of :data:`SCOPED_LAYERS` only
    on the requests it acts on (:mod:`fedshield.flower_ext.scoped_middleware`)."""
    import flwr.supernode.main as supernode_app

    for name in SCOPED_LAYERS:
        layer = rebinding_point(supernode_app, name, "runs a Runtime API layer only where it acts")
        setattr(supernode_app, name, gated_factory(layer))


def install() -> None:
    """In the SuperNode's process, before Flower's ``flower-supernode`` starts: all of the above."""
    check_flower_version("SuperNode")
    patch_supernode_polling()
    scope_runtime_layers()
