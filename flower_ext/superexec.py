"""The coordinator's SuperExec: it starts each ServerApp with its task token on stdin, not on the command line.

Flower's SuperExec takes a task from the SuperLink's Runtime API (``AcquireTask``) and starts the
ServerApp as ``flwr-serverapp --runtime-api-address ADDRESS --token TOKEN ...``
(``flwr.supercore.superexec.executor.subprocess_executor.SubprocessExecutor.launch``). A command line is
readable by every local user (``ps``), and the token opens the Runtime API for the run: its nodes and
every message. :func:`install` rebinds that ``launch``: the ServerApp is FedShield's entry point
(:mod:`fedshield.flower_ext.serverapp_main`), which reads the token from a pipe on its stdin, so it is
never on any command line nor in any file. Any other kind of task (a ClientApp, an agent, ...) is
refused: the coordinator runs ServerApps only.

Security code, so it fails closed: before the SuperExec polls for its first task, :func:`install` asks
Flower's executor factory, as ``run_superexec`` calls it, for the subprocess executor and checks that
its ``launch`` is this one; a Flower that builds another executor (or no longer looks the factory up)
stops the SuperExec with one line. And :mod:`fedshield.flower_ext.superexec_main` refuses to start
without ``--superexec-auth-secret-file``, so the Runtime API never hands this SuperExec's tasks to
a caller without the secret.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from fedshield.common.errors import FedShieldError
from fedshield.flower_ext.version_check import (
    FLOWER_VERSION,
    check_flower_version,
    hook,
    installed_flower_version,
    rebinding_point,
)

SERVERAPP_ENTRY = "fedshield.flower_ext.serverapp_main"


class TokenLaunchNotAdapted(FedShieldError):
    """Flower's SuperExec would start task processes with their token on the command line."""


def launch_with_token_on_stdin(executor: Any, spec: Any) -> Any:
    """Flower's ``SubprocessExecutor.launch`` for a ServerApp task, the token written to the child's stdin.

    ``spec`` is Flower's ``ExecutionSpec``; returns its ``LaunchResult``."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import LaunchResult

    del executor  # Flower's subprocess executor keeps no state per launch
    if spec.task_type != TaskType.SERVER_APP:
        return LaunchResult.failed(f"FedShield's coordinator runs ServerApps only, not {spec.task_type} tasks")
    args = [sys.executable, "-m", SERVERAPP_ENTRY, "--runtime-api-address", spec.runtime_api_address]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    quiet = subprocess.DEVNULL if spec.suppress_output else None
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=quiet, stderr=quiet)  # noqa: S603 - our entry point
    assert process.stdin is not None
    try:
        process.stdin.write(spec.token.encode("ascii") + b"\n")
    finally:
        process.stdin.close()
    return LaunchResult.accepted()


def install() -> None:
    """In the SuperExec's process, before it polls for tasks: task processes get their token on stdin."""
    check_flower_version("SuperExec")
    import flwr.supercore.superexec.run_superexec as superexec_loop
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.plugin import base_exec_plugin

    purpose = "starts ServerApps with their task token on stdin instead of the command line"
    executor_class = hook(subprocess_executor, "SubprocessExecutor", purpose)
    plugin_class = hook(base_exec_plugin, "BaseExecPlugin", purpose)
    launch_task = getattr(plugin_class, "launch_task", None)
    if not callable(getattr(executor_class, "launch", None)) or launch_task is None \
            or "launch" not in launch_task.__code__.co_names:
        raise TokenLaunchNotAdapted(
            f"flwr {installed_flower_version()} no longer launches tasks through SubprocessExecutor.launch, where "
            f"FedShield {purpose}; the SuperExec does not start; install flwr=={FLOWER_VERSION}")
    get_executor = rebinding_point(superexec_loop, "get_executor", purpose)
    executor_class.launch = launch_with_token_on_stdin
    built = get_executor(ExecutorType.SUBPROCESS)
    if getattr(type(built), "launch", None) is not launch_with_token_on_stdin:
        raise TokenLaunchNotAdapted(
            f"flwr {installed_flower_version()}'s SuperExec builds a {type(built).__name__}, which FedShield has not "
            f"adapted, so it would put each ServerApp's token on its command line; the SuperExec does not start; "
            f"install flwr=={FLOWER_VERSION}")
