"""Start and stop a real Flower SuperNode for one site, as a subprocess.

The SuperNode gets the site's data path and settings through ``--node-config`` (read by the ClientApp
as ``context.node_config``), its own local port (several sites may share a host), telemetry off, no
runtime dependency installation, and a bounded reconnect time so a vanished server ends it instead
of retrying forever (Flower issue #6250).

It runs in Flower's ``process`` isolation beside FedShield's warm executor
(:mod:`fedshield.flower_ext.app_executor_main`); both get the path of one fresh secret
(:class:`~fedshield.common.local_secret.LocalSecret`), so the SuperNode's local API hands the site's tasks
(and their tokens) only to an ``AcquireTask`` signed with it, not to any local user.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedshield.common.errors import ConfigError
from fedshield.common.flower_env import child_env, parent_env
from fedshield.common.local_secret import LocalSecret
from fedshield.common.process_tree import stop_process_group
from fedshield.flower_ext.executor_wake import WAKE_FD_ENV, wake_pair


def node_config_arg(values: dict[str, Any]) -> str:
    """Render ``--node-config`` as space-separated TOML ``key=value`` pairs.

    Flower's parser (``flwr.common.config.parse_config_args``) finds each value with a regular
    expression that ends a quoted string at its first quote, escaped or not: a string holding ``"`` is
    written as a TOML literal string ``'...'`` instead, and one holding both quote kinds (or a line
    break) is refused, naming the key.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            text = str(value)
            if "\n" in text or "\r" in text or ('"' in text and "'" in text):
                raise ConfigError(f"{key} {text!r}: a site setting may not hold both quote kinds or a line break; "
                                  "rename the folder or the site")
            rendered = f"'{text}'" if '"' in text else json.dumps(text)  # a JSON string is a TOML basic string
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


class SuperNode:
    """A ``flower-supernode`` child process."""

    def __init__(self, *, superlink: str, local_port: int, node_config: dict[str, Any], log_path: Path,
                 root_certificates: Path | None, auth_private_key: Path | None = None,
                 max_wait_time: float = 120.0, threads: int | None = None) -> None:
        self.superlink = superlink
        self.local_port = local_port
        self.node_config = node_config
        self.log_path = log_path
        self.root_certificates = root_certificates
        self.auth_private_key = auth_private_key
        self.max_wait_time = max_wait_time
        self.threads = threads
        self.secret: LocalSecret | None = None  # the SuperExec auth secret, while running
        self.process: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            # Flower's flower-supernode, started through our entry point for prompt polling.
            sys.executable, "-m", "fedshield.flower_ext.supernode_main",
            "--superlink", self.superlink,
            "--host", "127.0.0.1",
            "--port", str(self.local_port),
            # Flower's "process" isolation with FedShield's long-lived executor (flower_ext/app_executor.py); Flower's
            # own SuperExec ("subprocess") would put each task's token on a flwr-clientapp command line, and
            # Flower ignores the secret in that mode.
            "--isolation", "process",
            "--max-wait-time", str(self.max_wait_time),
            "--node-config", node_config_arg(self.node_config),
        ]
        if self.root_certificates is None:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.root_certificates)]
        if self.auth_private_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.auth_private_key)]
        if self.secret is not None:
            cmd += ["--superexec-auth-secret-file", str(self.secret.path)]
        return cmd

    def executor_command(self, wake_fd: int) -> list[str]:
        """The warm executor for this SuperNode: it signs its task requests with the secret."""
        if self.process is None or self.secret is None:
            raise ConfigError("the warm executor needs its SuperNode running; start the SuperNode first")
        return [sys.executable, "-m", "fedshield.flower_ext.app_executor_main", "--runtime-api-address",
                f"127.0.0.1:{self.local_port}", "--parent-pid", str(self.process.pid), "--wake-fd", str(wake_fd),
                "--superexec-auth-secret-file", str(self.secret.path)]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.secret = LocalSecret.create("supernode")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the children
        # the SuperNode wakes its executor when a message is stored (flower_ext/executor_wake.py)
        notify_end, wait_end = wake_pair()
        try:
            env = child_env(parent_env(), threads=self.threads)
            node_env = dict(env, **{WAKE_FD_ENV: str(notify_end.fileno())})
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=node_env, start_new_session=True,
                                            pass_fds=(notify_end.fileno(),))
            self.worker = subprocess.Popen(self.executor_command(wait_end.fileno()), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True, pass_fds=(wait_end.fileno(),))
        except BaseException:
            self.stop()
            raise
        finally:
            log.close()
            for end in (notify_end, wait_end):  # the children hold their own copies
                end.close()

    def poll(self) -> int | None:
        """Exit code of the SuperNode, or of a dead warm executor, or None while both run."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        if self.worker is not None and self.worker.poll() is not None:
            return self.worker.returncode
        return None

    def stop(self, grace: float = 10.0) -> None:
        """End the SuperNode and its executor; delete the secret."""
        stop_process_group(self.process, grace)
        stop_process_group(self.worker, grace)
        if self.secret is not None:
            self.secret.remove()
            self.secret = None
