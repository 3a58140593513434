"""A site runs only the tasks it allows: the built-in ones plus those it names.

Every message a site receives names the run's task in its run config. Before anything reads the site's
data, :func:`site_policy_mod` (the outermost ClientApp mod) compares that task with the site's
allowlist, carried in its node config (``allowed-tasks`` of :class:`SiteNodeConfig`, from
``fl-client join --allow-task`` and
``allowed-tasks = [...]`` in the data folder's ``fedshield.toml``). A task outside it gets an error
reply naming the reason, one log line at the site, and an event ``fl-client join`` prints; the data is
never opened. (Code from the server never runs at all: the warm executor refuses FABs that name
another ClientApp, see :mod:`fedshield.flower_ext.app_executor`, and no dependencies are installed.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Error, Message

from fedshield.client.events import emit
from fedshield.client.node_config import SiteNodeConfig
from fedshield.flower_ext.message_types import ErrorCode

log = logging.getLogger("fedshield.client.site_policy")


def allowed_tasks(node_config: Mapping[str, Any]) -> set[str]:
    """The built-in tasks plus the site's ``allowed-tasks`` (:class:`SiteNodeConfig`)."""
    from fedshield.tasks.registry import builtin_task_names

    settings = SiteNodeConfig.from_flower(node_config)
    return builtin_task_names() | (settings.allowed_task_names if settings is not None else set())


def refusal(task: str, node_config: Mapping[str, Any]) -> str | None:
    """Why this site refuses ``task``, or None when it is allowed."""
    allowed = allowed_tasks(node_config)
    if task in allowed:
        return None
    return (f"site refuses task {task!r}: not on its allowlist ({', '.join(sorted(allowed))}); the site operator "
            f"can add it with `fl-client join --allow-task {task}`")


def site_policy_mod(msg: Message, context: Context, call_next) -> Message:
    """Refuse, before any data is touched, every message of a run whose task this site does not allow."""
    settings = SiteNodeConfig.from_flower(context.node_config)
    if settings is None:  # simulation: the experimenter owns every virtual site
        return call_next(msg, context)
    task = str(context.run_config.get("task", ""))
    reason = refusal(task, context.node_config)
    if reason is None:
        return call_next(msg, context)
    log.warning(reason)
    emit(settings.events_file or None, "refused", run_id=str(context.run_id), message=reason)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
