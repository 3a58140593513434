"""Shorter retry backoff when Flower pulls message objects that are still in transit.

Flower 1.41 and 1.42 pulls a message's objects (the model arrays) with exponential backoff starting at 1 s
(``PULL_INITIAL_BACKOFF`` in ``flwr/supercore/constant.py``, bound as default arguments of
``pull_objects`` / ``pull_and_inflate_object_from_tree``). An object that is a few milliseconds from
arriving therefore costs 1-3 s; measured on loopback it was ~3 s per message for a site's ClientApp.
:func:`install` rebinds the name in the Flower module that calls it (the SuperNode's loop, the ServerApp's
HTTP grid, the ClientApp runtime) to a wrapper that passes a 20 ms initial backoff (capped at 0.5 s); the
retry limits and everything else stay Flower's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fedshield.flower_ext.version_check import hook

INITIAL_BACKOFF_S = 0.02
BACKOFF_CAP_S = 0.5


def _prompt(fn: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(fn, "_fedshield_prompt", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("initial_backoff", INITIAL_BACKOFF_S)
        kwargs.setdefault("backoff_cap", BACKOFF_CAP_S)
        return fn(*args, **kwargs)

    wrapper._fedshield_prompt = True  # type: ignore[attr-defined]  # a marker on the function object
    return wrapper


def install(module: ModuleType, name: str) -> None:
    """Make ``module.name`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``, as that
    module calls it) retry promptly."""
    setattr(module, name, _prompt(hook(module, name, "retries pulls of message objects promptly")))
