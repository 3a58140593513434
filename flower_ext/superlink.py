"""The SuperLink's adaptations: the control guard, long polls, scoped middleware, the ServerApp's start window.

Flower builds the SuperLink's app in ``flwr.superlink.main.create_app`` from the list ``_get_middleware()``
returns. :func:`install_middleware` rebinds that function so the list becomes, outermost first:

1. :class:`~fedshield.flower_ext.body_limit.BodyLimit`: a request body over the cap is refused before it is
   read, whoever sends it (:mod:`fedshield.flower_ext.network_limits`);
2. :class:`~fedshield.flower_ext.control_guard.CoordinatorOnly`, with a federation's coordinator token:
   only the coordinator uses the Control API, the Runtime API only from loopback;
3. :class:`~fedshield.flower_ext.held_pulls.HeldPulls`: empty pulls wait for the matching push, inside the
   guard, so a refused request is never held and every held answer passes Flower's own checks;
4. Flower's own layers, each scoped to the requests it acts on (:mod:`fedshield.flower_ext.scoped_middleware`).

The guard is security code and fails closed. Its hook gone (another Flower under the version override):
:func:`install` raises before anything is served. And since a rebinding works only while Flower still
calls the rebound name, :func:`install` also wraps ``create_app`` so that every app Flower builds is asked,
in process and before its port opens, to refuse a stranger
(:func:`~fedshield.flower_ext.control_guard.refuses_strangers`); an app that does not refuse is an error,
and the SuperLink does not start. ``fl-server start`` asks the
served SuperLink once more, over the network, before it registers sites or submits a run.

:func:`install` also bounds the SuperLink's connections (:mod:`fedshield.flower_ext.connection_limits`: idle
connections and unfinished TLS handshakes are closed), gives the ServerApp two minutes to start
(:mod:`fedshield.flower_ext.task_start_window`) and says why a SuperNode's activation was refused
(:mod:`fedshield.flower_ext.node_activation`).
"""

from __future__ import annotations

import functools
import sys
import warnings
from types import ModuleType
from typing import Any

from starlette.middleware import Middleware

from fedshield.common.errors import FedShieldError
from fedshield.flower_ext import (
    audit_refusals,
    connection_limits,
    node_activation,
    restarted_nodes,
    task_start_window,
)
from fedshield.flower_ext.body_limit import BodyLimit
from fedshield.flower_ext.control_guard import CoordinatorOnly, refuses_strangers
from fedshield.flower_ext.held_pulls import HOLD_S, HeldPulls
from fedshield.flower_ext.network_limits import NetworkLimits
from fedshield.flower_ext.scoped_middleware import scoped
from fedshield.flower_ext.version_check import (
    FLOWER_VERSION,
    check_flower_version,
    installed_flower_version,
    rebinding_point,
)


class GuardNotActive(FedShieldError):
    """The app Flower built for the SuperLink does not refuse what the control guard refuses."""


def _flower_app_module() -> ModuleType:
    import flwr.superlink.main as superlink_main

    return superlink_main


def install_middleware(token: str | None, ready_file: str | None = None, *, hold_s: float,
                       limits: NetworkLimits | None = None, listen_host: str | None = None) -> None:
    """Rebind Flower's ``_get_middleware``: with ``limits``, the body limit outermost; with a ``token``, the guard
    next; with ``hold_s`` > 0, long polls inside it; Flower's layers scoped, in Flower's order."""
    superlink_main = _flower_app_module()
    flower_middleware = rebinding_point(superlink_main, "_get_middleware",
                                        "adds the control guard and long polls to the SuperLink")

    def with_guard() -> list[Middleware]:
        bounded = [] if limits is None else [Middleware(BodyLimit, max_bytes=limits.max_message_bytes,
                                                        gap_s=limits.idle_timeout_s)]
        guard = [] if token is None else [Middleware(CoordinatorOnly, token=token, ready_file=ready_file,
                                                       listen_host=listen_host)]
        held = [Middleware(HeldPulls, hold_s=hold_s)] if hold_s > 0 else []
        return [*bounded, *guard, *held, *scoped(flower_middleware())]

    superlink_main._get_middleware = with_guard  # type: ignore[attr-defined]  # the door rebinds Flower's private hook


def check_built_apps() -> None:
    """Wrap Flower's ``create_app`` so that an app it builds without an active guard is an error, not served."""
    from importlib import import_module

    superlink_main = _flower_app_module()
    # importlib: Flower's package re-exports the function flower_superlink under its module's name
    cli = import_module("flwr.superlink.cli.flower_superlink")
    create_app = rebinding_point(superlink_main, "create_app", "checks the SuperLink's app for the control guard",
                                 caller=cli)

    @functools.wraps(create_app)
    def create_guarded_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        failure = refuses_strangers(app)
        if failure is not None:
            raise GuardNotActive(
                f"the SuperLink app flwr {installed_flower_version()} built lacks FedShield's control guard "
                f"({failure}), so the SuperLink does not start; install flwr=={FLOWER_VERSION}")
        print("FedShield guard: active (a stranger's Control and Runtime requests were refused at start-up)",
              file=sys.stderr, flush=True)
        return app

    superlink_main.create_app = create_guarded_app  # type: ignore[attr-defined]  # the door rebinds Flower's app factory


def install(token: str | None, ready_file: str | None = None, *, limits: NetworkLimits | None = None,
            hold_s: float = HOLD_S, listen_host: str | None = None) -> None:
    """In the SuperLink's process, before Flower's ``flower-superlink`` builds its app: everything above.
    ``token``: the coordinator's (None: ``--insecure`` development runs, no guard); ``ready_file``: sites are
    held off (HTTP 503) until it exists; ``limits``: what the port accepts, in every mode (None: the
    environment's, see :meth:`NetworkLimits.from_env`); ``listen_host``: the SuperLink's ``--host``, whose own
    processes may use the Runtime API from it."""
    check_flower_version("SuperLink")
    limits = limits or NetworkLimits.from_env()
    install_middleware(token, ready_file, hold_s=hold_s, limits=limits, listen_host=listen_host)
    connection_limits.install(limits)
    if token is not None:
        check_built_apps()
    task_start_window.install()  # a ServerApp on a busy host gets 2 minutes to start, not 30 s
    node_activation.install()  # a refused SuperNode learns whether its key is unknown or connected already
    audit_refusals.install()  # refusals go to the federation's audit log ($FEDSHIELD_AUDIT_DIR)
    restarted_nodes.install()  # a message a killed site had taken is answered with an error once it is back


def superlink_app(scope_layers: bool = True):
    """Flower's SuperLink FastAPI app, in this process, with its layers scoped as the SuperLink runs them
    (no guard, no long polls) or, ``scope_layers=False``, exactly as Flower builds it: for comparisons."""
    superlink_main = _flower_app_module()
    original = superlink_main._get_middleware  # pylint: disable=protected-access
    try:
        if scope_layers:
            install_middleware(None, hold_s=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return superlink_main.create_app()
    finally:
        superlink_main._get_middleware = original  # type: ignore[attr-defined]  # the door restores Flower's private hook
