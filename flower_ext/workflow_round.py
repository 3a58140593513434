"""The round counter of Flower's legacy workflows (``DefaultWorkflow``, ``SecAggPlusWorkflow``), read and set.

Those workflows keep the current round in the run context's ``config_records``, under keys from
``flwr.server.workflow.constant``, a module of Flower's that its public API does not document. FedShield's
workflow steps (round-0 evaluation, the resume gate, SecAgg+ stage timing) reach that counter only through
these two functions, so a Flower release that moves it is met in one place.
"""

from __future__ import annotations

from typing import Any


def _configs(context: Any) -> Any:
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD

    return context.state.config_records[MAIN_CONFIGS_RECORD]


def current_round(context: Any) -> int:
    """The round the workflow is in (1-based; 0 while FedShield evaluates the initial model)."""
    from flwr.server.workflow.constant import Key

    return int(_configs(context)[Key.CURRENT_ROUND])


def set_current_round(context: Any, rnd: int) -> None:
    """Set the workflow's round (FedShield's round-0 evaluation moves it to 0 and back)."""
    from flwr.server.workflow.constant import Key

    _configs(context)[Key.CURRENT_ROUND] = rnd
