"""Flower's compatibility layer for 1.x strategies, named from its submodules in this one place.

FedShield runs Flower's strategies (``flwr.server.strategy``) through the legacy workflows, its sites answer
them as a 1.x ``NumPyClient`` (with Flower's central-DP clipping mods on that path), and a few ClientApp mods
read a TRAIN message as the ``FitIns`` those strategies sent. Flower keeps these helpers, and
two of the types a 1.x strategy's methods take, in submodules its packages do not export
(``flwr.compat.common.recorddict_compat``, ``flwr.server.workflow.default_workflows``,
``flwr.server.client_proxy``, ``flwr.server.criterion``); importing them here, and nowhere else, leaves
one file to adapt when Flower moves them. Nothing in Flower is changed: they are re-exported as they are.
"""

from __future__ import annotations

from flwr.client import Client, NumPyClient
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins, recorddict_to_fitres
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion
from flwr.server.workflow.default_workflows import default_evaluate_workflow, default_fit_workflow

__all__ = ["Client", "ClientProxy", "Criterion", "NumPyClient", "adaptiveclipping_mod", "default_evaluate_workflow",
           "default_fit_workflow", "fixedclipping_mod", "fitres_to_recorddict", "recorddict_to_fitins",
           "recorddict_to_fitres"]
