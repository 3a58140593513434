"""Attacking virtual sites, for robustness experiments: ``fl-sim run --attack KIND:SITES``.

The first ``SITES`` virtual sites (partition ids 0 … SITES−1) train honestly and then replace the update
they send (Δ = trained − received model) before it leaves them, as a compromised site would:

- ``nan``: every value NaN;
- ``scale``: Δ × 1,000 (a model-replacement attack, Bagdasaryan et al. 2020);
- ``sign-flip``: −Δ (pushes the model away from what the honest sites learn);
- ``random``: Gaussian noise with the norm of the honest Δ (a site that sends noise instead of training).

Simulation only: it is a ClientApp mod that acts on virtual sites (a real site's ClientApp never has it),
applied inside SecAgg+'s mod, so under ``--secagg`` the attack is on the update before it is masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedshield.common.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import Context, Message

ATTACKS = ("nan", "scale", "sign-flip", "random")
SCALE = 1e3


@dataclass(frozen=True)
class Attack:
    """``kind`` of attack by the first ``sites`` virtual sites (none when ``sites`` is 0)."""

    kind: str = ""
    sites: int = 0

    @classmethod
    def parse(cls, text: str) -> Attack:
        """``"nan:2"`` → two sites sending NaN; ``""`` → no attack. One-line error naming ``--attack``."""
        if not text:
            return cls()
        kind, _, count = text.partition(":")
        if kind not in ATTACKS or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--attack {text!r}: use KIND:SITES with KIND one of {', '.join(ATTACKS)} and SITES "
                              "a positive count, e.g. scale:2")
        return cls(kind, int(count))


def corrupt(kind: str, sent: list[np.ndarray], trained: list[np.ndarray], rng: np.random.Generator
            ) -> list[np.ndarray]:
    """The arrays an attacking site sends instead of ``trained``, the model it trained from ``sent``."""
    delta = [t.astype(np.float64) - s.astype(np.float64) for s, t in zip(sent, trained, strict=True)]
    if kind == "nan":
        out = [np.full_like(d, np.nan) for d in delta]
    elif kind == "scale":
        out = [SCALE * d for d in delta]
    elif kind == "sign-flip":
        out = [-d for d in delta]
    elif kind == "random":
        norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta))
        noise = [rng.standard_normal(d.shape) for d in delta]
        scale = norm / max(math.sqrt(sum(float(np.sum(n * n)) for n in noise)), 1e-12)
        out = [scale * n for n in noise]
    else:
        raise ValueError(f"unknown attack {kind!r}")
    return [(s.astype(np.float64) + d).astype(t.dtype) if t.dtype.kind == "f" else t
            for s, t, d in zip(sent, trained, out, strict=True)]


class AttackingSites:
    """ClientApp mod: the first ``attack.sites`` virtual sites corrupt their training replies."""

    def __init__(self, attack: Attack, seed: int) -> None:
        self.attack, self.seed = attack, seed

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        # Flower imported here, not at the top: `fl-sim run` checks --attack before it loads Flower
        from flwr.app import Message, MessageType
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

        from fedshield.flower_ext.legacy_api import fitres_to_recorddict, recorddict_to_fitins, recorddict_to_fitres

        partition = context.node_config.get("partition-id")
        if (msg.metadata.message_type != MessageType.TRAIN or partition is None
                or int(partition) >= self.attack.sites):
            return call_next(msg, context)
        ins = recorddict_to_fitins(msg.content, keep_input=True)
        sent = parameters_to_ndarrays(ins.parameters)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        res = recorddict_to_fitres(reply.content, keep_input=True)
        rng = np.random.default_rng([self.seed, int(partition), int(ins.config.get("round", 0))])
        res.parameters = ndarrays_to_parameters(corrupt(self.attack.kind, sent, parameters_to_ndarrays(res.parameters),
                                                        rng))
        return Message(fitres_to_recorddict(res, keep_input=True), reply_to=msg)
