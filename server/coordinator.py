"""One coordinated run, as ``fl-server start`` drives it: check, start the SuperLink, submit, follow, stop.

:func:`plan_run` checks every setting and the federation and writes nothing; :func:`coordinate` starts
the SuperLink (TLS and site authentication with a federation), registers the enrolled sites' keys,
submits the FedShield ServerApp as a Flower run, follows ``results.json`` (and, every 10 s, the run's
status on the SuperLink) until the run ends, and stops the SuperLink. Progress goes to
:class:`CoordinatorCallbacks`; errors are :class:`FedShieldError` with the cause and the fix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fedshield.common import net, pki
from fedshield.common.atomic_io import atomic_write_json, atomic_write_text
from fedshield.common.cli_options import CentralDpOptions, SecAggOptions, TrainingOptions
from fedshield.common.errors import ConfigError, FedShieldError, RunFolderError
from fedshield.common.net import port_in_use
from fedshield.common.results_view import ResultsWatcher
from fedshield.common.run_config import RunConfig
from fedshield.flower_ext.network_limits import MAX_MESSAGE_KEY, MIB, NetworkLimits, default_max_message_bytes
from fedshield.server.audit_trail import RunAudit, operator
from fedshield.server.federation import Federation
from fedshield.server.run_resume import RESUME_ROUND_KEY, mark_resuming
from fedshield.server.run_status_probe import RunStatusProbe
from fedshield.server.run_submission import register_sites, submit, write_app, write_flwr_home
from fedshield.server.site_identity import ENROLLED, IDENTITY_KEY
from fedshield.server.superlink import SuperLink, TlsFiles
from fedshield.tasks.registry import check_task_name

#: port a development (``--insecure``) coordinator listens on when none is given
INSECURE_PORT = 9092
#: seconds between two questions to the SuperLink about the run (results.json is read every 0.5 s)
STATUS_PROBE_INTERVAL = 10.0
RESULTS_POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class CoordinatorPlan:
    """A run checked by :func:`plan_run`, nothing started or written yet.

    Attributes:
        cfg: the validated run config (model, initial weights and learning rate resolved by the task).
        folder: the run folder (absolute): results.json, checkpoints, server.log.
        host, port: where the SuperLink listens.
        federation: the federation (TLS, enrolled sites), or None for an ``--insecure`` run.
        join_timeout: seconds to wait for ``cfg.min_clients`` sites (0 = until interrupted).
        limits: the largest request body the SuperLink reads, and how long a connection may idle.
        resume_after: the last completed round of the run this one resumes (``--resume``), else None.
    """

    cfg: RunConfig
    folder: Path
    host: str
    port: int
    federation: Federation | None
    join_timeout: float
    limits: NetworkLimits
    resume_after: int | None = None

    @property
    def address(self) -> str:
        """HOST:PORT of the coordinator's own Flower calls: the address the SuperLink listens on, loopback when
        it listens on every interface (both are in the certificate's SANs, :func:`check_listen_address`)."""
        return net.join_address(net.dial_host(self.host), self.port)


def _ignore(*_args: Any) -> None:
    """A callback that reports nothing."""


@dataclass(frozen=True)
class CoordinatorCallbacks:
    """What :func:`coordinate` reports while the run goes on; each defaults to nothing.

    Attributes:
        sites_registered: (number of enrolled site keys registered with the SuperLink).
        run_submitted: (run id) once Flower accepted the run.
        sites_connected: (sites connected so far) while the run waits for ``min_clients``.
        all_connected: (site names, seconds since the SuperLink started) when round 1 starts.
        site_refused: (site name, one-line reason) for each site the handshake refused, when round 1 starts.
        round_finished: (results.json document, the round's entry) once per evaluated round.
    """

    sites_registered: Callable[[int], None] = _ignore
    run_submitted: Callable[[int], None] = _ignore
    sites_connected: Callable[[int], None] = _ignore
    all_connected: Callable[[list[str], float], None] = _ignore
    site_refused: Callable[[str, str], None] = _ignore
    round_finished: Callable[[dict[str, Any], dict[str, Any]], None] = _ignore


def check_run_folder(folder: Path) -> None:
    """Refuse a run folder that already holds a run's results.json (``RunFolderError``)."""
    results = folder / "results.json"
    if not results.exists():
        return
    try:
        status = json.loads(results.read_text()).get("status")
    except (OSError, ValueError):
        status = "unreadable"
    if status == "finished":
        raise RunFolderError(f"--run-dir {folder}: already holds a finished run; pass a new --run-dir")
    raise RunFolderError(f"--run-dir {folder}: holds an earlier run (status {status}); pass a new --run-dir "
                         "so its results are not overwritten")


def load_federation(folder: Path, on_warning: Callable[[str], None]) -> Federation:
    """The federation in ``folder`` with its server files checked and at least one site enrolled;
    certificate expiry warnings go to ``on_warning``."""
    fed = Federation.load(folder)
    fed.check_server_files()
    for line in fed.certificate_warnings():
        on_warning(line)
    if not fed.enrolled():
        raise ConfigError(f"--dir {folder}: no site is enrolled; add one with fl-server add-site NAME --dir {folder}")
    if not fed.audit_key.exists():
        on_warning(f"{fed.audit_key}: this federation predates audit logs; its audit key is made now and its audit "
                   f"log ({fed.root / 'audit.jsonl'}) starts with this run")
    return fed


def check_listen_address(fed: Federation, host: str) -> None:
    """Refuse a ``--host`` the server certificate does not name: neither the sites nor the coordinator's own
    calls (which dial that address) could verify the server there. Every-interface hosts are dialled on
    loopback, which the certificate always names."""
    dialled = net.dial_host(host)
    cert = pki.load_cert(fed.server_cert)
    if not pki.names_host(cert, dialled):
        dns, ips = pki.san_entries(cert)
        flag = "--server-ip" if net.is_ip(dialled) else "--server-name"
        raise ConfigError(f"--host {host}: the server certificate {fed.server_cert} is not valid for it (it names "
                          f"{', '.join(dns + ips)}); add it with fl-server init --dir {fed.root} --renew-server-cert "
                          f"{flag} {dialled}, or listen on 0.0.0.0")


def plan_run(training: TrainingOptions, central: CentralDpOptions, secagg: SecAggOptions, *, min_clients: int,
             fraction_train: float, dp: bool, run_dir: Path | None, federation_dir: Path | None, host: str,
             port: int | None, insecure: bool, join_timeout: float, on_warning: Callable[[str], None],
             max_message_mb: float = 0.0, idle_timeout: float | None = None,
             max_connections_per_peer: int | None = None) -> CoordinatorPlan:
    """Check the run's settings, the federation, the run folder and the port; start and write nothing.

    ``run_dir`` None: ``./runs/<time>``; ``port`` None: the federation's, or :data:`INSECURE_PORT`;
    ``dp`` False: plan the run without DP (a proposal: sites decide); ``max_message_mb`` 0: the cap
    :func:`~fedshield.flower_ext.network_limits.default_max_message_bytes` chooses; ``idle_timeout`` None: the
    default. Federation warnings go to ``on_warning``. Raises ``ConfigError``/``RunFolderError`` naming the
    flag and the fix.
    """
    check_task_name(training.task)  # flags first; torch (resolve_settings below) takes seconds to import
    limits, fed, port = _deployment(secagg=secagg.secagg, federation_dir=federation_dir, port=port,
                                    insecure=insecure, on_warning=on_warning, max_message_mb=max_message_mb,
                                    idle_timeout=idle_timeout, host=host,
                                    max_connections_per_peer=max_connections_per_peer)
    folder = (run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    check_run_folder(folder)
    cfg = RunConfig(**training.config_fields(dp), **asdict(central), **asdict(secagg),
                    min_clients=min_clients, fraction_train=fraction_train, dp=dp, run_dir=str(folder)).validate()
    from fedshield.strategies.registry import make_strategy

    make_strategy(training.strategy)  # unknown strategy: fail now, not inside the server
    from fedshield.tasks.run_settings import resolve_settings  # loads the task: a broken plugin fails here

    settings = resolve_settings(training.task, model=training.model, init_weights=training.init_weights,
                                lr=training.lr, dp=dp, trusted_data=training.trusted_data, seed=training.seed)
    cfg.model, cfg.init_weights, cfg.lr = settings.model, settings.init_weights, settings.lr
    cfg.trusted_data = settings.trusted_data
    cfg.validate()
    _check_port(host, port)
    return CoordinatorPlan(cfg, folder, host, port, fed, join_timeout, limits)


def plan_resume(run_dir: Path, given: dict[str, tuple[str, Any]], *, federation_dir: Path | None, host: str,
                port: int | None, insecure: bool, join_timeout: float, on_warning: Callable[[str], None],
                max_message_mb: float = 0.0, idle_timeout: float | None = None,
             max_connections_per_peer: int | None = None) -> CoordinatorPlan:
    """Check a run folder to resume (``--resume``), its last completed round and the coordinator's flags;
    start and write nothing.

    The run's settings are the ones its results.json recorded; ``given`` (RunConfig field -> (flag, value))
    are the run's settings given again on the command line: any that differs is refused. The coordinator's
    own flags (federation, address, port, limits, join timeout) may differ from the first start.
    """
    from fedshield.server.run_resume import read_run, resume_point, resumed_config

    folder = run_dir.resolve()
    cfg = resumed_config(read_run(folder), folder, given)
    point = resume_point(folder)  # a damaged state file fails here, not in the ServerApp
    if cfg.trusted_data and not Path(cfg.trusted_data).is_dir():  # the reference the direction test compared with
        raise ConfigError(f"--resume {run_dir}: the run's --trusted-data folder {cfg.trusted_data} is gone; put it "
                          "back where it was to resume the run")
    limits, fed, port = _deployment(secagg=cfg.secagg, federation_dir=federation_dir, port=port, insecure=insecure,
                                    on_warning=on_warning, max_message_mb=max_message_mb, idle_timeout=idle_timeout,
                                    host=host, max_connections_per_peer=max_connections_per_peer)
    _check_port(host, port)
    return CoordinatorPlan(cfg, folder, host, port, fed, join_timeout, limits,
                           resume_after=point.last_round)


def _deployment(*, secagg: bool, federation_dir: Path | None, port: int | None, insecure: bool,
                on_warning: Callable[[str], None], max_message_mb: float, idle_timeout: float | None,
                host: str, max_connections_per_peer: int | None = None
                ) -> tuple[NetworkLimits, Federation | None, int]:
    """The coordinator's own settings checked: network limits, the federation (None: ``--insecure``) and that its
    certificate names ``host``, the port."""
    if max_message_mb < 0:
        raise ConfigError("--max-message-mb: must be positive, or 0 to size it from the run")
    max_bytes = (round(max_message_mb * MIB) if max_message_mb > 0
                 else default_max_message_bytes(secagg=secagg))
    limits = NetworkLimits(max_bytes)
    if idle_timeout is not None:
        limits = replace(limits, idle_timeout_s=idle_timeout)
    if max_connections_per_peer is not None:
        limits = replace(limits, max_connections_per_peer=max_connections_per_peer)
    limits = limits.checked()
    if insecure and federation_dir is not None:
        raise ConfigError("--insecure and --dir exclude each other; pick one")
    if not insecure and federation_dir is None:
        raise ConfigError("no federation: pass --dir FOLDER (create it with `fl-server init --dir FOLDER "
                          "--server-ip ... --sites ...`), or --insecure for a loopback development run")
    fed = load_federation(federation_dir, on_warning) if federation_dir is not None else None
    if fed is not None:
        check_listen_address(fed, host)
    return limits, fed, port if port is not None else (fed.port if fed is not None else INSECURE_PORT)


def _check_port(host: str, port: int) -> None:
    if port_in_use(host, port, listeners_only=True):  # a killed coordinator's connections may linger
        raise ConfigError(f"--port {port}: already in use on {host}; stop what uses it or pick another --port")


def coordinate(plan: CoordinatorPlan, callbacks: CoordinatorCallbacks) -> dict[str, Any]:
    """Run the planned run to its end and stop everything started; the finished run's results.json document.

    Raises ``FedShieldError`` with the reason and the server log when the run fails, or when the
    SuperLink ends it without results.
    """
    folder, fed = plan.folder, plan.federation
    # the run's models, results and logs are the coordinator's alone: other local users get no way in (a folder
    # the user made beforehand keeps the mode they gave it)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = TlsFiles(fed.ca_cert, fed.server_cert, fed.server_key) if fed is not None else None
    audit = RunAudit.for_coordinator(folder, fed.audit_log() if fed is not None else None)
    superlink = SuperLink(host=plan.host, port=plan.port, state_db=None, log_path=folder / "server.log", tls=tls,
                          enable_node_auth=fed is not None, control_token=fed.control_token if fed else None,
                          fleet_ready_file=folder / ".fleet-ready" if fed else None, limits=plan.limits,
                          audit=audit.federation)
    (folder / ".fleet-ready").unlink(missing_ok=True)
    started = time.monotonic()
    superlink.start()
    try:
        extra: dict[str, Any] = {"join-timeout": plan.join_timeout, MAX_MESSAGE_KEY: plan.limits.max_message_bytes,
                                 **({IDENTITY_KEY: ENROLLED} if fed is not None else {})}
        if plan.resume_after is not None:
            extra[RESUME_ROUND_KEY] = plan.resume_after
        app_dir = write_app(folder / "app", plan.cfg, extra)
        flwr_home = write_flwr_home(folder / ".flwr", plan.address, root_certificates=fed.ca_cert if fed else None,
                                    control_token=fed.control_token if fed else None)
        if fed is not None:
            node_ids = register_enrolled_sites(fed, flwr_home)
            callbacks.sites_registered(len(fed.enrolled()))
            # lets `fl-server revoke-site` unregister a site from this running SuperLink at once
            atomic_write_json(fed.coordinator_file, {"pid": os.getpid(), "flwr-home": str(flwr_home),
                                                     "nodes": node_ids}, mode=0o600)
            (folder / ".fleet-ready").touch()  # sites may now activate (the guard answered 503 so far)
        if plan.resume_after is not None:
            mark_resuming(folder)
        run_id = submit(app_dir, flwr_home)
        resumed: dict[str, Any] = {} if plan.resume_after is None else {"after_round": plan.resume_after}
        audit.record("run resumed" if resumed else "run submitted", flower_run=run_id, task=plan.cfg.task,
                     rounds=plan.cfg.rounds, strategy=plan.cfg.strategy, dp=plan.cfg.dp, secagg=plan.cfg.secagg,
                     by=operator(), **resumed)
        callbacks.run_submitted(run_id)

        def on_status(doc: dict[str, Any]) -> None:
            if doc.get("status") == "waiting-for-sites":
                callbacks.sites_connected(doc.get("connected", 0))
            elif doc.get("status") == "running":
                for site, reason in sorted(doc.get("refused_sites", {}).items()):
                    callbacks.site_refused(site, reason)
                callbacks.all_connected(sorted(doc.get("sites", {})), time.monotonic() - started)

        watcher = ResultsWatcher(folder / "results.json", callbacks.round_finished, on_status=on_status)
        doc, status = follow_run(watcher, RunStatusProbe(flwr_home), run_id)
    except BaseException as exc:
        audit.record("run stopped", reason="interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
                     else f"{type(exc).__name__}: {exc}"[:500], by=operator())
        raise
    finally:
        superlink.stop()
        if fed is not None:
            fed.coordinator_file.unlink(missing_ok=True)
    if doc is None or doc.get("status") != "finished":
        reason = (doc or {}).get("error") or status or "unknown"
        audit.record("run failed", reason=str(reason)[:500])
        raise FedShieldError(f"run failed: {reason}; server log {folder / 'server.log'}")
    final = doc.get("final", {})
    audit.record("run finished", rounds=final.get("round"), epsilon_max=final.get("epsilon_max"))
    return doc


def register_enrolled_sites(fed: Federation, flwr_home: Path) -> dict[str, int]:
    """Register every enrolled site's public key with the SuperLink (Flower's SuperNode authentication);
    site name -> node id."""
    keys = {}
    for site, entry in sorted(fed.enrolled().items()):
        keys[site] = flwr_home / "site-keys" / f"{site}.pub"
        atomic_write_text(keys[site], str(entry["public-key"]) + "\n")
    return register_sites(keys, flwr_home)


def follow_run(watcher: ResultsWatcher, probe: RunStatusProbe,
               run_id: int) -> tuple[dict[str, Any] | None, str | None]:
    """Poll results.json until the run is finished or failed; (last document, last SuperLink status).

    results.json is the fast path; the Control API is asked only every :data:`STATUS_PROBE_INTERVAL`
    seconds, to notice a ServerApp that died before it could write its failure. Closes ``probe``.
    """
    status = None
    doc = None
    next_check = time.monotonic() + STATUS_PROBE_INTERVAL
    try:
        while True:
            doc = watcher.poll()
            if doc is not None and doc.get("status") in ("finished", "failed"):
                return doc, status
            if time.monotonic() >= next_check:
                status = probe(run_id)
                if status and status.startswith("finished"):
                    return watcher.poll(), status
                next_check = time.monotonic() + STATUS_PROBE_INTERVAL
            time.sleep(RESULTS_POLL_INTERVAL)
    finally:
        probe.close()
