"""A site taking part in a run, as ``fl-client join`` drives it: check, reach the server, run the SuperNode.

:func:`plan_join` checks the kit, the site's privacy flags, its data folder and its privacy ledger and
writes nothing; :func:`connect` waits for the server and verifies its certificate; :func:`take_part`
runs the site's SuperNode (restarting it when its local port was taken before it could bind it) until
the coordinator ends the run, handing each event the ClientApp writes to :class:`SiteCallbacks`.
Errors are :class:`FedShieldError` with the cause and the fix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.client.events import read_new
from fedshield.client.kit_lock import already_connected_error, kit_lock
from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.site_folder import check_folder
from fedshield.client.supernode import SuperNode
from fedshield.common import net
from fedshield.common.errors import ConfigError, FedShieldError, ServerUnreachableError
from fedshield.common.process_tree import last_line
from fedshield.common.site_kit import SiteKit, load_kit
from fedshield.flower_ext.node_activation import ALREADY_CONNECTED

#: the coordinator a development (``--insecure``) site joins when no ``--server`` is given
INSECURE_SERVER = "127.0.0.1:9092"
# What Flower 1.41's SuperNode logs when the SuperLink does not accept its key (HTTP 412 on activation,
# then exit code 305): its process exit status alone does not tell this apart from other failures.
AUTH_REFUSED_MARK = "Failed to activate SuperNode"
# uvicorn's line when the SuperNode's local API cannot bind its port; Flower then exits before it connects
PORT_TAKEN_MARK = b"address already in use"
# Flower's SuperNode logs its node id once the SuperLink accepted it (start_client_internal.py)
SUPERNODE_CONNECTED_MARK = b"SuperNode ID: "
MAX_PORT_RESTARTS = 3
#: seconds between two looks at the events file and the SuperNode
POLL_INTERVAL = 0.2
#: default seconds a site keeps trying to reach a coordinator that went away mid-run (``--reconnect-timeout``)
RECONNECT_TIMEOUT = 600.0
#: least pause (s) between two SuperNode starts while the coordinator is away
RECONNECT_PAUSE = 2.0
#: seconds a site waits for the SuperLink to drop its kit's previous connection (a killed process's): Flower
#: 1.42 drops a node after missing 2 heartbeats of 30 s (``flwr.common.constant``), plus a margin
STALE_CONNECTION_WAIT = 90.0
#: pause (s) between two activations while the SuperLink still holds the kit's previous connection
STALE_CONNECTION_PAUSE = 5.0


@dataclass(frozen=True)
class JoinPlan:
    """A site checked by :func:`plan_join`, nothing started or written yet.

    Attributes:
        node_config: the site's settings as its SuperNode hands them to the ClientApp (name, task, DP, ...).
        kit: the site's kit (TLS, site key), or None for an ``--insecure`` site.
        server: the coordinator's HOST:PORT.
        train_examples, val_examples: the site's validated examples.
        epsilon_spent: ε the site's ledger already spent on this data (0 without DP or entries).
        ledger_delta: the δ the ledger settled on, None while it has no entry (or without DP).
        connect_timeout: seconds to wait for the server.
        threads: torch intra-op threads per training process.
        reconnect_timeout: seconds to keep trying when the coordinator goes away mid-run (0: give up at once).
    """

    node_config: SiteNodeConfig
    kit: SiteKit | None
    server: str
    train_examples: int
    val_examples: int
    epsilon_spent: float
    ledger_delta: float | None
    connect_timeout: float
    threads: int
    reconnect_timeout: float = RECONNECT_TIMEOUT

    @property
    def state(self) -> Path:
        """The site's state folder: privacy ledger, SuperNode log, events file."""
        return Path(self.node_config.state_dir)


def plan_join(*, data: Path, kit: Path | None, server: str | None, insecure: bool, task: str | None,
              target: str | None, name: str | None, dp: bool, epsilon: float, delta: float, max_grad_norm: float,
              accountant: str, site_metrics: str, allow_repeats: bool, metrics_cost: float, state_dir: Path | None,
              device: str, threads: int, allowed_tasks: list[str], connect_timeout: float,
              reconnect_timeout: float = RECONNECT_TIMEOUT) -> JoinPlan:
    """Check the kit, the flags, the data folder and the privacy ledger; start and write nothing.

    ``server`` None: the kit's, or :data:`INSECURE_SERVER`; ``name`` None: the kit's site, or the data
    folder's name; ``state_dir`` None: ``DATA/.fedshield``. A mistyped data folder fails before torch is
    imported. Raises ``ConfigError``/``DataError`` naming the flag or file and the fix, also on a spent budget.
    """
    if insecure and kit is not None:
        raise ConfigError("--insecure and --kit exclude each other; pick one")
    if not insecure and kit is None:
        raise ConfigError("no kit: pass --kit KIT_FOLDER (the coordinator's `fl-server init`/`add-site` wrote it), "
                          "or --insecure for a loopback development run")
    site_kit = load_kit(kit) if kit is not None else None
    if site_kit is not None and name is not None and name != site_kit.site:
        raise ConfigError(f"--name {name}: the kit {site_kit.folder} is enrolled as site {site_kit.site!r}, and the "
                          f"coordinator knows a site by its kit's key; drop --name (or pass --name {site_kit.site})")
    server = server or (site_kit.server if site_kit is not None else INSECURE_SERVER)
    if epsilon <= 0:
        raise ConfigError("--epsilon must be positive (use --no-dp to train without privacy)")
    if accountant not in ("rdp", "prv"):
        raise ConfigError(f"--accountant {accountant!r}: use rdp or prv")
    if not 0 <= delta < 1:
        raise ConfigError("--delta must be in [0, 1)")
    if site_metrics not in ("dp", "exact"):
        raise ConfigError(f"--site-metrics {site_metrics!r}: use dp (the default) or exact")
    if not 0 < metrics_cost <= 1:
        raise ConfigError("--metrics-cost must be a fraction in (0, 1], e.g. 0.05")
    if reconnect_timeout < 0:
        raise ConfigError("--reconnect-timeout must be 0 (give up when the coordinator goes away) or more seconds")
    net.split_address(server, flag="--server")
    data = data.resolve()
    check_folder(data)  # a mistyped --data fails before torch is imported (0.3 s instead of 3 s)
    from fedshield.client.device import resolve_device
    from fedshield.client.site_check import check_site
    from fedshield.tasks.site_config import site_allowed_tasks

    resolve_device(device)
    task_name, _options, site = check_site(data, task=task, overrides={"target": target}, private=dp)
    state = (state_dir or data / ".fedshield").resolve()
    spent, ledger_delta = (check_ledger(state, epsilon=epsilon, delta=delta, accountant=accountant,
                                        train_examples=len(site.train), data_dir=data) if dp else (0.0, None))
    node_config = SiteNodeConfig(
        data_path=str(data), site_name=name or (site_kit.site if site_kit is not None else data.name),
        task=task_name, state_dir=str(state), events_file=str(state / f"events-{os.getpid()}.jsonl"), dp=dp,
        epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant, site_metrics=site_metrics,
        allow_repeats=allow_repeats, metrics_cost=metrics_cost, device=device,
        allowed_tasks=",".join(sorted({*allowed_tasks, *site_allowed_tasks(data)})))
    return JoinPlan(node_config, site_kit, server, len(site.train), len(site.val), spent, ledger_delta,
                    connect_timeout, threads, reconnect_timeout)


def check_ledger(state: Path, *, epsilon: float, delta: float, accountant: str, train_examples: int,
                 data_dir: Path | None = None) -> tuple[float, float | None]:
    """Open the site's privacy ledger in ``state`` and check this join can train; (ε spent, the ledger's δ or
    None while it has no entry).

    Fails now, not at round 1, on a δ not below 1/N, a corrupt, foreign, newer, missing or rolled-back ledger,
    or a spent budget.
    """
    from fedshield.client.privacy_ledger import PrivacyLedger

    if delta >= 1.0 / train_examples:
        raise ConfigError(f"--delta {delta:g} is not below 1/N = {1.0 / train_examples:.2e} for this site's "
                          f"{train_examples} training examples; use a smaller δ or leave it 0 for the default")
    ledger = PrivacyLedger.open(state, epsilon_budget=epsilon, delta=None, accountant=accountant, data_dir=data_dir)
    if not ledger.entries:
        return 0.0, None
    spent = ledger.epsilon_spent()
    if spent >= epsilon:
        raise ConfigError(f"{ledger.path}: this site already spent ε {spent:.3g} of its budget {epsilon:g} on "
                          "this data; it cannot train again (a larger --epsilon is a policy decision)")
    return spent, ledger.delta


def connect(plan: JoinPlan) -> None:
    """Create the site's state folder (mode 0700), wait up to ``plan.connect_timeout`` seconds for the server,
    and with a kit verify the server's certificate against the federation's CA."""
    plan.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    host, port = net.split_address(plan.server, flag="--server")
    deadline = time.monotonic() + plan.connect_timeout
    if not net.wait_reachable(host, port, plan.connect_timeout):
        raise ServerUnreachableError(f"--server {plan.server}: nothing answered within {plan.connect_timeout:g} s; "
                                     "check the address and that `fl-server start` is running there")
    if plan.kit is not None:
        from fedshield.client.tls_preflight import check_server_certificate

        check_server_certificate(host, port, plan.kit.ca_cert, wait_s=max(0.0, deadline - time.monotonic()))


def _ignore(*_args: Any) -> None:
    """A callback that reports nothing."""


@dataclass(frozen=True)
class SiteCallbacks:
    """What :func:`take_part` reports; each defaults to nothing.

    Attributes:
        started: (SuperNode log) once the SuperNode runs and waits for the coordinator.
        port_restarted: (new local port) when the SuperNode's local port was taken and it starts again.
        reconnecting: (seconds left) when the coordinator went away and the site starts its SuperNode again.
        stale_connection: (seconds left) when the SuperLink still holds this kit's previous connection (a killed
            ``fl-client join``'s) and the site tries again.
        event: (one site event the ClientApp wrote, :mod:`fedshield.client.events`) in order.
    """

    started: Callable[[Path], None] = _ignore
    port_restarted: Callable[[int], None] = _ignore
    reconnecting: Callable[[float], None] = _ignore
    stale_connection: Callable[[float], None] = _ignore
    event: Callable[[dict[str, Any]], None] = _ignore


def take_part(plan: JoinPlan, callbacks: SiteCallbacks) -> None:
    """Run the site's SuperNode until the coordinator ends the run; stop it and remove the events file.

    When the coordinator goes away mid-run (its SuperLink stopped: Flower's SuperNode gives up and exits),
    the SuperNode is started again, for up to ``plan.reconnect_timeout`` seconds, and joins whatever run the
    coordinator's new SuperLink carries, such as the same run resumed (``fl-server start --resume``); the
    site's privacy ledger refuses any round it already released.

    A site holds its kit's lock (:mod:`fedshield.client.kit_lock`) throughout: a second join with the kit on
    this host is refused at once, and a refusal by the SuperLink while this process holds the lock is a killed
    process's connection, waited out for up to :data:`STALE_CONNECTION_WAIT` seconds.

    Returns when the run finished; raises ``FedShieldError`` when the site refused the run, the server
    refused the site's key, the coordinator stayed away, or the run ended with another status.
    """
    if plan.kit is None:
        _take_part(plan, callbacks)
        return
    with kit_lock(plan.kit.node_key, plan.kit.site):
        _take_part(plan, callbacks)


def _take_part(plan: JoinPlan, callbacks: SiteCallbacks) -> None:
    events_file = Path(plan.node_config.events_file)
    node = SuperNode(
        superlink=plan.server,
        local_port=net.free_port(),
        node_config=plan.node_config.to_flower(),
        log_path=plan.state / "supernode.log",
        root_certificates=plan.kit.ca_cert if plan.kit is not None else None,
        auth_private_key=plan.kit.node_key if plan.kit is not None else None,
        max_wait_time=max(plan.connect_timeout, 60.0),
        threads=plan.threads,
    )
    log_start = node.log_path.stat().st_size if node.log_path.exists() else 0
    node.start()
    offset = 0
    outcome: str | None = None
    restarts = 0
    away_since: float | None = None  # when the coordinator went away, while the site tries to reach it again
    stale_since: float | None = None  # when the SuperLink first refused the kit as connected already
    try:
        callbacks.started(node.log_path)
        while outcome is None:
            events, offset = read_new(events_file, offset)
            for event in events:
                callbacks.event(event)
                outcome = run_outcome(event) or outcome
            code = node.poll()
            if code is not None and outcome is None and restarts < MAX_PORT_RESTARTS \
                    and port_taken(node.log_path, log_start):
                # its local port was taken between choosing and binding it: it never reached the server
                node.stop()
                node.local_port = net.free_port()
                callbacks.port_restarted(node.local_port)
                log_start = node.log_path.stat().st_size
                restarts += 1
                node.start()
                continue
            if code is not None and outcome is None:
                if plan.kit is not None and already_connected(node.log_path, log_start):
                    now = time.monotonic()
                    stale_since = now if stale_since is None else stale_since
                    if now - stale_since >= STALE_CONNECTION_WAIT:
                        raise already_connected_error(plan.kit.site)
                    callbacks.stale_connection(STALE_CONNECTION_WAIT - (now - stale_since))
                    node.stop()
                    time.sleep(STALE_CONNECTION_PAUSE)
                    log_start = node.log_path.stat().st_size
                    node.start()
                    continue
                if plan.kit is not None and auth_refused(node.log_path, log_start):
                    raise FedShieldError(f"the server refused this site's key: {plan.node_config.site_name} is not "
                                         "enrolled in its federation or was revoked; ask the coordinator "
                                         "(fl-server add-site)")
                now = time.monotonic()
                if plan.reconnect_timeout <= 0 or (away_since is not None
                                                   and now - away_since >= plan.reconnect_timeout):
                    waited = (f" and the coordinator at {plan.server} did not take it back within "
                              f"{plan.reconnect_timeout:g} s (--reconnect-timeout)" if plan.reconnect_timeout > 0
                              else "")
                    raise FedShieldError(f"the site's SuperNode stopped (exit {code}){waited}: "
                                         f"{last_line(node.log_path)}; full log {node.log_path}")
                if away_since is None:
                    away_since = now
                left = plan.reconnect_timeout - (now - away_since)
                callbacks.reconnecting(left)
                node.stop()
                time.sleep(RECONNECT_PAUSE)
                node.max_wait_time = max(left, 1.0)
                log_start = node.log_path.stat().st_size
                node.start()
                continue
            if away_since is not None and reconnected(node.log_path, log_start):
                away_since = None  # back: a later loss gets the whole window again
            time.sleep(POLL_INTERVAL)
        if not outcome.startswith("refused"):
            wait_replies_sent(node.log_path, log_start)
    finally:
        node.stop()
        events_file.unlink(missing_ok=True)
    if outcome.startswith("refused"):
        raise FedShieldError(outcome.removeprefix("refused: "))
    if outcome != "finished":
        raise FedShieldError(f"the coordinator ended the run with status {outcome}; see its results.json")


def run_outcome(event: dict[str, Any]) -> str | None:
    """The run's end as one site event says it: ``refused: <why>``, the final status on ``run-complete``,
    else None."""
    kind = event.get("event")
    if kind == "refused":
        return f"refused: {event.get('message')}"
    if kind == "run-complete":
        return str(event.get("status", "finished"))
    return None


def _log_since(log_path: Path, since: int) -> bytes | None:
    """The SuperNode log from byte ``since`` on (this join's part), or None if unreadable."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(since)
            return fh.read()
    except OSError:
        return None


def reconnected(log_path: Path, since: int) -> bool:
    """Whether this start's part of the SuperNode log shows that it is connected to a SuperLink again."""
    return SUPERNODE_CONNECTED_MARK in (_log_since(log_path, since) or b"")


def port_taken(log_path: Path, since: int) -> bool:
    """Whether this start's part of the SuperNode log shows that its local API could not bind its port."""
    return PORT_TAKEN_MARK in (_log_since(log_path, since) or b"")


def already_connected(log_path: Path, since: int) -> bool:
    """Whether this join's part of the SuperNode log shows its key connected already from another SuperNode."""
    return ALREADY_CONNECTED.encode() in (_log_since(log_path, since) or b"")


def auth_refused(log_path: Path, since: int) -> bool:
    """Whether this join's part of the SuperNode log shows a refused key."""
    return AUTH_REFUSED_MARK.encode() in (_log_since(log_path, since) or b"")


def wait_replies_sent(log_path: Path, since: int, timeout: float = 10.0) -> None:
    """Let the SuperNode deliver its last reply (the run-complete answer) before it is stopped.

    The ClientApp reports the end of the run before its reply has left the SuperNode; stopping the
    SuperNode at once could cut that reply in half, and the server would then spend minutes retrying
    to pull it (Flower retries a missing object up to 500 times). Flower's SuperNode logs
    "Receiving:", "Sending:" and "Sent successfully"/"Failed to send" per message; wait until every
    message received has been sent, at most ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _log_since(log_path, since)
        if text is None:
            return
        received = text.count(b"Receiving: ")
        done = text.count(b"Sent successfully") + text.count(b"Failed to send")
        if received and done >= received:
            return
        time.sleep(0.05)
