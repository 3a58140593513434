"""Start and stop a real Flower SuperLink as a subprocess, health-checked.

Flower has no public in-process SuperLink API in 1.4x; like Flower's own CLI
(``flwr/cli/local_superlink.py``) we start ``flower-superlink`` and poll ``GET /health``. The SuperLink
keeps its state in memory (see :meth:`SuperLink.command`), never installs dependencies at run time, and
runs with telemetry and update checks off (see :mod:`fedshield.common.flower_env`). It is started through
FedShield's SuperLink entry point (:mod:`fedshield.flower_ext.superlink_main`); with a federation's control
token that adds the control guard, so that only the coordinator can use its Control API, and
:meth:`SuperLink.start` checks from outside that the guard refuses a stranger before it returns.

The SuperLink runs in Flower's ``process`` isolation beside a SuperExec FedShield starts itself
(:mod:`fedshield.flower_ext.superexec_main`), both given the path of one fresh secret
(:class:`~fedshield.common.local_secret.LocalSecret`): the Runtime API hands a run's task (and its token)
only to an ``AcquireTask`` signed with that secret, and the SuperExec passes each ServerApp its token on
stdin. A local user therefore neither reads a token from ``ps`` nor acquires one.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.audit_log import AuditLog
from fedshield.common.errors import FedShieldError
from fedshield.common.flower_env import child_env, parent_env
from fedshield.common.local_secret import LocalSecret
from fedshield.common.net import dial_host, join_address
from fedshield.common.process_tree import last_line, stop_process_group
from fedshield.flower_ext.audit_refusals import AUDIT_DIR_ENV, AUDIT_KEY_ENV
from fedshield.flower_ext.control_guard import LISTEN_HOST_ENV, READY_ENV, TOKEN_ENV, probe_served
from fedshield.flower_ext.network_limits import NetworkLimits


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the SuperLink's HTTPS: CA certificate, server certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


class SuperLinkStartError(FedShieldError):
    """The SuperLink process exited or did not become healthy."""


class SuperLink:
    """A ``flower-superlink`` child process bound to ``host:port``."""

    def __init__(self, *, host: str, port: int, state_db: Path | None, log_path: Path,
                 tls: TlsFiles | None, enable_node_auth: bool = False, control_token: Path | None = None,
                 fleet_ready_file: Path | None = None, limits: NetworkLimits | None = None,
                 audit: AuditLog | None = None) -> None:
        self.host, self.port = host, port
        self.state_db, self.log_path = state_db, log_path
        self.tls = tls
        self.enable_node_auth = enable_node_auth
        self.control_token = control_token
        self.fleet_ready_file = fleet_ready_file  # the guard holds sites off (503) until this file exists
        self.limits = limits  # request size and idle limits on the port (None: the SuperLink's defaults)
        self.audit = audit  # the federation's audit log, where the SuperLink records what it refuses
        self.process: subprocess.Popen[bytes] | None = None
        self.superexec: subprocess.Popen[bytes] | None = None
        self.secret: LocalSecret | None = None  # the SuperExec auth secret, while running

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            # Flower's flower-superlink, through our entry point: the control guard (with a federation)
            # and an exit when fl-server start is gone.
            sys.executable, "-m", "fedshield.flower_ext.superlink_main",
            "--host", self.host,
            "--port", str(self.port),
            # In memory unless a file is asked for: with the SQLite file, Flower 1.41 keeps every message
            # object (the model arrays) in SQLite, and each object request then took tens of ms on our
            # 2-core hosts; in memory the same 3-site round went from 6.5-8 s to 3.2 s
            # (benchmarks/deploy_latency.py). Nothing FedShield needs is lost: results, checkpoints and
            # privacy ledgers are our own files, and a run does not survive a SuperLink restart anyway.
            "--database", ":flwr-in-memory:" if self.state_db is None else str(self.state_db),
            # process isolation: the SuperExec is ours (superexec_command), and only a caller holding the
            # secret acquires tasks from the Runtime API (Flower ignores the secret in subprocess isolation)
            "--isolation", "process",
            "--disable-runtime-dependency-installation",
        ]
        if self.secret is not None:
            cmd += ["--superexec-auth-secret-file", str(self.secret.path)]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                    "--ssl-keyfile", str(self.tls.server_key)]
        if self.enable_node_auth:
            cmd.append("--enable-supernode-auth")
        return cmd

    def superexec_command(self, superlink_pid: int) -> list[str]:
        """FedShield's SuperExec for this SuperLink: it takes the ServerApp tasks from the Runtime API (loopback,
        signed with the secret) and starts each ServerApp with its token on stdin."""
        if self.secret is None:
            raise SuperLinkStartError("the SuperExec needs the SuperLink's secret; start the SuperLink first")
        cmd = [sys.executable, "-m", "fedshield.flower_ext.superexec_main",
               "--runtime-api-address", join_address(self._loopback_host(), self.port),
               "--superexec-auth-secret-file", str(self.secret.path),
               "--parent-pid", str(superlink_pid)]
        return cmd + (["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca_cert)])

    def start(self, timeout: float = 60.0) -> None:
        """Launch and wait until ``/health`` answers; raise with the log's last line on failure. With a
        control token, a SuperLink that does not refuse an unauthenticated Control request is stopped and
        refused too: it must never serve without its guard."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.secret = LocalSecret.create("superlink")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the children
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self._env(), start_new_session=True)
            self.superexec = subprocess.Popen(self.superexec_command(self.process.pid), stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=child_env(parent_env()), start_new_session=True)
        except BaseException:
            self.stop()
            raise
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise SuperLinkStartError(f"flower-superlink exited with code {self.process.returncode}: "
                                          f"{last_line(self.log_path)} (full log: {self.log_path})")
            if self.superexec is not None and self.superexec.poll() is not None:
                self.stop()
                raise SuperLinkStartError(f"the SuperExec exited with code {self.superexec.returncode}: "
                                          f"{last_line(self.log_path)} (full log: {self.log_path})")
            if self.healthy():
                self._check_guard()
                return
            time.sleep(0.2)
        self.stop()
        raise SuperLinkStartError(f"flower-superlink did not become healthy within {timeout:.0f} s; see "
                                  f"{self.log_path}")

    def _check_guard(self) -> None:
        if self.control_token is None:
            return
        failure = probe_served(self._base_url(), self._ssl_context())
        if failure is not None:
            self.stop()
            raise SuperLinkStartError(f"the SuperLink on {self.address} is not guarded ({failure}), so it was "
                                      f"stopped; see {self.log_path}")

    def _env(self) -> dict[str, str]:
        extra = parent_env()
        if self.control_token is not None:
            extra[TOKEN_ENV] = str(self.control_token)
            extra[LISTEN_HOST_ENV] = self.host  # the ServerApp dials this address: its requests come from it
        if self.fleet_ready_file is not None:
            extra[READY_ENV] = str(self.fleet_ready_file)
        if self.limits is not None:
            extra.update(self.limits.to_env())
        if self.audit is not None:
            extra.update({AUDIT_DIR_ENV: str(self.audit.folder), AUDIT_KEY_ENV: str(self.audit.key_file)})
        return child_env(extra)

    def _loopback_host(self) -> str:
        return dial_host(self.host)

    def _base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{join_address(dial_host(self.host), self.port)}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca_cert))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self._base_url()}/health", timeout=1.0,
                                        context=self._ssl_context()) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the SuperExec's and the SuperLink's process groups (the ServerApp too), then SIGKILL; delete
        the secret."""
        stop_process_group(self.superexec, grace)
        stop_process_group(self.process, grace)
        if self.secret is not None:
            self.secret.remove()
            self.secret = None
