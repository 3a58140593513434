"""The ServerApp's adaptations: its HTTP grid pulls reply objects promptly, and SecAgg+ is the sites'.

The ServerApp runs in a ``flwr-serverapp`` process that Flower's SuperExec starts (or, in simulation, in
``fl-sim``'s own process), so its ``main`` is FedShield's ``@server_app.main()`` function
(``server/server_app.py``), which calls :func:`install` first. The prompt reply polling itself
(``server/prompt_grid.py``) wraps Flower's public ``Grid`` and needs nothing from here.
"""

from __future__ import annotations

from fedshield.flower_ext import prompt_pulls, secagg
from fedshield.flower_ext.version_check import check_flower_version


def install() -> None:
    """In the ServerApp's process, before the first round: replies' objects (the sites' arrays), which may
    still be arriving at the SuperLink when the ServerApp pulls them, are retried from 20 ms instead of 1 s
    (:mod:`fedshield.flower_ext.prompt_pulls`); SecAgg+ expands and decodes masks as the sites do
    (:mod:`fedshield.flower_ext.secagg`)."""
    check_flower_version("ServerApp")
    from flwr.superlink.grid import http_grid

    prompt_pulls.install(http_grid, "pull_objects")
    secagg.install()
