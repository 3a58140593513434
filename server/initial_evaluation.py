"""Federated evaluation of the initial model, as round 0, inside Flower's default workflow.

Flower's ``DefaultWorkflow`` evaluates the initial parameters only centrally (``strategy.evaluate(0)``),
which a deployment cannot do (the server holds no data). Without a federated round-0 figure, "the
model improved" cannot be shown. This wraps any fit workflow (Flower's default now, SecAgg+'s later):
before round 1 trains, it runs Flower's own ``default_evaluate_workflow`` once with the round set to 0.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid

from fedshield.flower_ext.legacy_api import default_evaluate_workflow
from fedshield.flower_ext.workflow_round import current_round, set_current_round

Workflow = Callable[[Grid, Context], None]


def with_initial_evaluation(fit_workflow: Workflow) -> Workflow:
    """Return a fit workflow that first evaluates the initial model on every site (round 0)."""

    def workflow(grid: Grid, context: Context) -> None:
        if current_round(context) == 1:
            set_current_round(context, 0)
            try:
                default_evaluate_workflow(grid, context)
            finally:
                set_current_round(context, 1)
        fit_workflow(grid, context)

    return workflow
