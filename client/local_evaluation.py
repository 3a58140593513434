"""A site's evaluation of the global model on its held-out records: what the evaluation reply may say.

The held-out records are private data that DP-SGD never touches, so under DP an evaluation reply is a
release of its own: recorded in the ledger (a replayed evaluation is refused like a replayed round)
and, by default, made of Gaussian releases of per-record losses and metrics with their record count
(:mod:`fedshield.client.private_statistics`). A site that opted out with ``--site-metrics exact``
sends the task's exact metrics, recorded in its ledger and in the results as outside ε.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from fedshield.client.site_privacy import PrivacySettings, privacy_session
from fedshield.common.errors import ConfigError
from fedshield.common.kernel_cache import bound_kernel_cache
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import SiteData, Task


@dataclass(frozen=True)
class EvaluationOutcome:
    """An evaluation reply: loss, the example count it is weighted by, metrics, and ``statistics``:
    ``dp`` (Gaussian releases inside ε) or ``exact``."""

    loss: float
    count: int
    metrics: dict[str, float] = field(default_factory=dict)
    statistics: str = "exact"
    epsilon: float | None = None  # the site's ε spent after this release (DP sites)


def evaluate_round(task: Task, site: SiteData, model: nn.Module, cfg: RunConfig, *, run_id: str, rnd: int,
                   privacy: PrivacySettings, device: torch.device) -> EvaluationOutcome:
    """Evaluate ``model`` on the site's held-out records and return what the reply may carry."""
    bound_kernel_cache(model, cfg.batch_size)  # a process may evaluate before it first trains (common/kernel_cache.py)
    model.to(device)
    if not privacy.enabled:
        return _exact(task, site, model, device)
    per_example = getattr(task, "per_example_statistics", None)
    if privacy.private_statistics and not callable(per_example):
        raise ConfigError(f"task {task.name} gives no per-example statistics, so this site cannot report an evaluation "
                          "inside its ε; it refuses the evaluation (`fl-client join --site-metrics exact` sends exact "
                          "metrics outside ε instead)")
    with privacy_session(privacy, site, cfg, run_id=run_id, rnd=rnd, purpose="evaluate") as session:
        plan = session.plan(cfg)
        entry = session.begin(rnd, "evaluate", plan, steps=0)
        if privacy.private_statistics:
            assert callable(per_example)
            means = session.release_means(per_example(model, site.val, device=device), entry)
            outcome = EvaluationOutcome(means.pop("loss"), session.counts.released_val, means, "dp")
        else:
            outcome = _exact(task, site, model, device)
        session.ledger.release(entry)
        return replace(outcome, epsilon=session.ledger.epsilon_spent())


def _exact(task: Task, site: SiteData, model: nn.Module, device: torch.device) -> EvaluationOutcome:
    result = task.evaluate(model, site.val, device=device)
    loss = float(result.pop("loss"))
    return EvaluationOutcome(loss, len(site.val), result, "exact")
