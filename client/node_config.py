"""The site's node config: what `fl-client join` tells its SuperNode and the ClientApp reads, one schema.

Flower hands the SuperNode's ``--node-config`` to every ClientApp message as ``context.node_config``, a
flat mapping of hyphenated keys. Both ends use :class:`SiteNodeConfig`, so a key is named, typed and
defaulted in one place: the writer (``fl-client join``) renders it with :meth:`to_flower`, the reader
(:mod:`fedshield.client.site_session`, the site policy, the ClientApp) parses it with
:meth:`from_flower`. A simulation's virtual SuperNodes carry only Flower's ``partition-id`` and
``num-partitions``: :meth:`from_flower` returns None for them.

These are the site's own decisions; the coordinator's run config never overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedshield.common.errors import ConfigError

Scalar = str | bool | float | int


@dataclass(frozen=True)
class SiteNodeConfig:
    """A real site's settings, as its SuperNode passes them to the ClientApp.

    Attributes:
        data_path: the site's data folder (absolute).
        site_name: the name it reports to the coordinator.
        task: the task its data is for.
        state_dir: folder of its privacy ledger, lock and logs.
        events_file: JSONL file the ClientApp appends events to, for `fl-client join` to print ("" = none).
        dp: DP-SGD on (only the site's own ``--no-dp`` turns it off).
        epsilon, delta, max_grad_norm, accountant: the site's DP budget and mechanism.
        site_metrics: ``dp`` or ``exact`` (:mod:`fedshield.client.private_statistics`).
        allow_repeats: answer a repeated round or evaluation, counting it again.
        metrics_cost: how much the replies' statistics may raise DP-SGD's noise multiplier (fraction).
        device: ``auto``, ``cpu`` or ``cuda``.
        allowed_tasks: comma-separated third-party tasks the site runs besides the built-in ones.
    """

    data_path: str
    site_name: str
    task: str
    state_dir: str
    events_file: str = ""
    dp: bool = True
    epsilon: float = 8.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    site_metrics: str = "dp"
    allow_repeats: bool = False
    metrics_cost: float = 0.05
    device: str = "auto"
    allowed_tasks: str = ""

    def to_flower(self) -> dict[str, Scalar]:
        """Flower's node config: hyphenated keys, scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_flower(cls, node_config: Mapping[str, Any]) -> SiteNodeConfig | None:
        """Parse a node config; None for a simulation's virtual SuperNode (no ``data-path``).

        Raises ``ConfigError`` naming the key when a value has the wrong type.
        """
        if "data-path" not in node_config:
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in node_config:
                continue
            raw = node_config[key]
            try:
                if f.type in ("bool", bool):
                    values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
                elif f.type in ("float", float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = str(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"node config {key} = {raw!r} is not a {f.type}; restart the site with "
                                  "`fl-client join`") from None
        data = str(values["data_path"])
        values.setdefault("site_name", data.rstrip("/").rsplit("/", 1)[-1])
        values.setdefault("task", "")
        values.setdefault("state_dir", f"{data.rstrip('/')}/.fedshield")
        return cls(**values)

    @property
    def allowed_task_names(self) -> set[str]:
        """The third-party task names in ``allowed_tasks``."""
        return {t.strip() for t in self.allowed_tasks.split(",") if t.strip()}
