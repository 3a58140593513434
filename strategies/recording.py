"""A strategy wrapper that reports every round's per-site and aggregated results.

Flower's strategies aggregate but keep per-site results to themselves; this wrapper delegates every
call unchanged to the wrapped strategy (any of Flower's, or a DP wrapper around one) and hands what
passes through to a :class:`RoundObserver`, which the ServerApp turns into ``results.json`` and
checkpoints.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager
from flwr.server.strategy import Strategy

from fedshield.flower_ext.legacy_api import ClientProxy
from fedshield.strategies.delegating import DelegatingStrategy
from fedshield.strategies.update_checks import RejectedUpdate


class RoundObserver(Protocol):
    """Receives what the strategy saw each round."""

    def on_train(self, rnd: int, sampled: list[int], results: list[tuple[int, int, dict[str, Scalar]]],
                 failed: list[tuple[int, str]], aggregate: dict[str, Scalar],
                 parameters: list[np.ndarray] | None) -> None: ...

    def on_evaluate(self, rnd: int, results: list[tuple[int, int, float, dict[str, Scalar]]],
                    failed: list[tuple[int, str]], loss: float | None,
                    aggregate: dict[str, Scalar]) -> None: ...

    def on_centralized(self, rnd: int, loss: float, metrics: dict[str, Scalar]) -> None: ...

    def on_sampled(self, rnd: int, stage: str, sampled: list[int]) -> None:
        """The sites (node ids) asked to ``train`` or ``evaluate`` in round ``rnd``, before they answer."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(text: str) -> str:
    """The site's own error message out of Flower's wrapped error (Ray traceback, ClientApp exception)."""
    text = _ANSI.sub("", text.replace("\\n", "\n").replace("\\'", "'"))  # a repr inside a repr
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else text.strip()
    return first.rstrip("')\">").strip()[:300]  # the closing quotes and '>' of the wrapping reprs


def _failed(sampled: list[int], answered: set[int], failures: list) -> list[tuple[int, str]]:
    """Node ids that were sampled but gave no usable result, with the reason.

    A rejected update names its site (:class:`~fedshield.strategies.update_checks.RejectedUpdate`);
    Flower's own failures do not, so the other missing sites take the remaining reasons in order.
    """
    named = {f.node_id: f.reason for f in failures if isinstance(f, RejectedUpdate)}
    reasons = [short_reason(str(f)) if isinstance(f, BaseException) else f"status {f[1].status.message}"
               for f in failures if not isinstance(f, RejectedUpdate)]
    missing = [nid for nid in sampled if nid not in answered and nid not in named]
    out = [(nid, reasons[i] if i < len(reasons) else "no reply") for i, nid in enumerate(missing)]
    return out + [(nid, reason) for nid, reason in named.items() if nid in sampled]


class RecordingStrategy(DelegatingStrategy):
    """Delegate to ``inner``; report rounds to ``observer``."""

    def __init__(self, inner: Strategy, observer: RoundObserver) -> None:
        super().__init__(inner)
        self.observer = observer
        self._sampled_fit: dict[int, list[int]] = {}
        self._sampled_eval: dict[int, list[int]] = {}

    def __repr__(self) -> str:
        return f"Recording({self.inner!r})"

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._sampled_fit[server_round] = [proxy.node_id for proxy, _ in instructions]
        self.observer.on_sampled(server_round, "train", self._sampled_fit[server_round])
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        sampled = self._sampled_fit.pop(server_round, [])
        answered = {proxy.node_id for proxy, _ in results}
        self.observer.on_train(
            server_round,
            sampled,
            [(proxy.node_id, res.num_examples, dict(res.metrics)) for proxy, res in results],
            _failed(sampled, answered, failures),
            dict(metrics),
            parameters_to_ndarrays(parameters) if parameters is not None else None,
        )
        return parameters, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        instructions = self.inner.configure_evaluate(server_round, parameters, client_manager)
        self._sampled_eval[server_round] = [proxy.node_id for proxy, _ in instructions]
        self.observer.on_sampled(server_round, "evaluate", self._sampled_eval[server_round])
        return instructions

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        sampled = self._sampled_eval.pop(server_round, [])
        answered = {proxy.node_id for proxy, _ in results}
        self.observer.on_evaluate(
            server_round,
            [(proxy.node_id, res.num_examples, res.loss, dict(res.metrics)) for proxy, res in results],
            _failed(sampled, answered, failures),
            loss,
            dict(metrics),
        )
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        out = self.inner.evaluate(server_round, parameters)
        if out is not None:
            self.observer.on_centralized(server_round, float(out[0]), dict(out[1]))
        return out
