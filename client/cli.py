"""``fl-client``: join a federation as a site (``join``) and inspect the site's privacy ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from fedshield.common.cli_support import console, guarded, set_debug, warn_loudly
from fedshield.common.errors import ConfigError, FedShieldError, ServerUnreachableError
from fedshield.common.results_view import ROUND_METRICS

# What Flower 1.41's SuperNode logs when the SuperLink does not accept its key (HTTP 412 on activation,
# then exit code 305): its process exit status alone does not tell this apart from other failures.
AUTH_REFUSED_MARK = "Failed to activate SuperNode"


def _log_since(log_path: Path, since: int) -> bytes | None:
    """The SuperNode log from byte ``since`` on (this join's part), or None if unreadable."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(since)
            return fh.read()
    except OSError:
        return None


# uvicorn's line when the SuperNode's local API cannot bind its port; Flower then exits before it connects
PORT_TAKEN_MARK = b"address already in use"
MAX_PORT_RESTARTS = 3


def _port_taken(log_path: Path, since: int) -> bool:
    """Whether this start's part of the SuperNode log shows that its local API could not bind its port."""
    return PORT_TAKEN_MARK in (_log_since(log_path, since) or b"")


def _auth_refused(log_path: Path, since: int) -> bool:
    """Whether this join's part of the SuperNode log shows a refused key."""
    return AUTH_REFUSED_MARK.encode() in (_log_since(log_path, since) or b"")

app = typer.Typer(
    help="Run a FedShield site: validate your data folder, connect to the coordinator and train "
    "with differential privacy. Raw data never leaves this machine.",
    no_args_is_help=True,
    add_completion=False,
)


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 1))


@app.command()
@guarded
def join(
    data: Path = typer.Option(..., "--data", help="The site's data folder (data.npz, images/<label>/*.png or a CSV, plus optional fedshield.toml)."),
    kit: Optional[Path] = typer.Option(None, "--kit", help="This site's kit folder from the coordinator (fl-server init / "
                                       "add-site): CA certificate, site key, server address. TLS + site authentication."),
    server: Optional[str] = typer.Option(None, "--server", help="Coordinator address HOST:PORT (default: the kit's; "
                                         "127.0.0.1:9092 with --insecure)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP without TLS or site authentication: loopback development only."),
    task: Optional[str] = typer.Option(None, "--task", help="Task of this data (default: fedshield.toml or inferred)."),
    target: Optional[str] = typer.Option(None, "--target", help="Tabular target column (overrides fedshield.toml)."),
    name: Optional[str] = typer.Option(None, "--name", help="Site name shown to the coordinator (default: the folder's name)."),
    epsilon: float = typer.Option(8.0, "--epsilon", help="This site's lifetime ε budget on this data."),
    delta: float = typer.Option(0.0, "--delta", help="δ; 0 picks min(1e-5, 1/(10·N))."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Per-sample clipping bound C."),
    accountant: str = typer.Option("rdp", "--accountant", help="Privacy accountant for the ledger: rdp or prv (Opacus)."),
    no_dp: bool = typer.Option(False, "--no-dp", help="Train WITHOUT differential privacy (explicit opt-out, reported to the server)."),
    site_metrics: str = typer.Option("dp", "--site-metrics", help="What replies say about the data besides the update: "
                                     "dp (losses, metrics and example counts as Gaussian releases inside ε; the default) "
                                     "or exact (exact values OUTSIDE any ε: development only, recorded in the ledger and results)."),
    allow_repeated_rounds: bool = typer.Option(False, "--allow-repeated-rounds", help="Answer a round or evaluation the "
                                               "coordinator asks for again, counting each repeat in ε (default: refuse it)."),
    metrics_cost: float = typer.Option(0.05, "--metrics-cost", help="How much the private statistics in replies may raise "
                                       "DP-SGD's noise multiplier (a fraction; larger: more accurate metrics, noisier updates)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Where the site's privacy ledger and logs live (default DATA/.fedshield)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    threads: int = typer.Option(_default_threads(), "--threads", min=1, help="Torch intra-op threads for this site's training."),
    allow_task: list[str] = typer.Option([], "--allow-task", help="Also run this installed third-party task "
                                         "(repeatable; built-in tasks are always allowed; also `allowed-tasks` in fedshield.toml)."),
    connect_timeout: float = typer.Option(30.0, "--connect-timeout", help="Seconds to wait for the server before giving up."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Validate DATA, connect to the coordinator, train every round it asks for, exit when the run ends.

    Example: fl-client join --kit ./kits/hospital_a --data ./data/hospital_a
    """
    set_debug(debug)
    from fedshield.client.events import read_new
    from fedshield.client.node_config import SiteNodeConfig
    from fedshield.client.site_folder import check_folder
    from fedshield.client.supernode import SuperNode
    from fedshield.common.net import free_port, split_address, wait_reachable
    from fedshield.common.process_tree import last_line

    from fedshield.common.site_kit import load_kit

    if insecure and kit is not None:
        raise ConfigError("--insecure and --kit exclude each other; pick one")
    if not insecure and kit is None:
        raise ConfigError("no kit: pass --kit KIT_FOLDER (the coordinator's `fl-server init`/`add-site` wrote it), "
                          "or --insecure for a loopback development run")
    site_kit = load_kit(kit) if kit is not None else None
    server = server or (site_kit.server if site_kit is not None else "127.0.0.1:9092")
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
    host, port = split_address(server, flag="--server")
    data = data.resolve()
    check_folder(data)  # a mistyped --data fails before torch is imported (0.3 s instead of 3 s)
    from fedshield.client.device import resolve_device
    from fedshield.client.site_check import check_site
    from fedshield.tasks.site_config import site_allowed_tasks

    resolve_device(device)
    task_name, _options, site = check_site(data, task=task, overrides={"target": target}, private=not no_dp)
    site_name = name or (site_kit.site if site_kit is not None else data.name)
    state = (state_dir or data / ".fedshield").resolve()
    if not no_dp:
        from fedshield.client.privacy_ledger import PrivacyLedger

        n_train = len(site.train)
        if delta >= 1.0 / n_train:
            raise ConfigError(f"--delta {delta:g} is not below 1/N = {1.0 / n_train:.2e} for this site's {n_train} "
                              "training examples; use a smaller δ or leave it 0 for the default")
        # Fail now, not at round 1, on a corrupt, foreign or newer ledger, or a spent budget.
        ledger = PrivacyLedger.open(state, epsilon_budget=epsilon, delta=None, accountant=accountant)
        spent = ledger.epsilon_spent() if ledger.entries else 0.0
        if spent >= epsilon:
            raise ConfigError(f"{ledger.path}: this site already spent ε {spent:.3g} of its budget {epsilon:g} on "
                              "this data; it cannot train again (a larger --epsilon is a policy decision)")
    console.print(f"site [bold]{site_name}[/]: {len(site.train)} training / {len(site.val)} validation "
                  f"examples for task {task_name} ({data})")
    if insecure:
        warn_loudly("--insecure: this site's updates travel WITHOUT encryption; use only on loopback")
    if no_dp:
        warn_loudly("--no-dp: this site trains WITHOUT differential privacy; its updates can leak its data")
    else:
        shown_delta = f"δ={ledger.delta:.1e}" if ledger.entries else ("δ=" + (f"{delta:.1e}" if delta else "min(1e-5, 1/10N')"))
        console.print(f"privacy: DP-SGD, lifetime budget ε={epsilon:g} (spent so far {spent:.3f}, "
                      f"{accountant.upper()} accountant, {shown_delta}), clip C={max_grad_norm:g}; "
                      + ("losses, metrics and counts in replies are DP releases inside ε" if site_metrics == "dp"
                         else "metrics in replies are EXACT"))
        if site_metrics == "exact":
            warn_loudly("--site-metrics exact: this site's replies carry EXACT losses, metrics and example counts of its "
                        "data, which no ε covers; recorded in its ledger and in the coordinator's results")
        if allow_repeated_rounds:
            console.print("repeated rounds: answered, and each repeat is counted in ε again (--allow-repeated-rounds)")

    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    events_file = state / f"events-{os.getpid()}.jsonl"
    console.print(f"compute: device {device}, {threads} torch intra-op thread(s) per training process "
                  f"(--threads; {os.cpu_count()} cores here, lower it when several sites share a host)")
    console.print(f"connecting to {server} (up to {connect_timeout:g} s) ...")
    if not wait_reachable(host, port, connect_timeout):
        raise ServerUnreachableError(f"--server {server}: nothing answered within {connect_timeout:g} s; check "
                                     "the address and that `fl-server start` is running there")
    if site_kit is not None:
        from fedshield.client.tls_preflight import check_server_certificate

        check_server_certificate(host, port, site_kit.ca_cert)
        console.print(f"server certificate verified against federation {site_kit.federation}'s CA; "
                      f"authenticating as site {site_kit.site}")
    node = SuperNode(
        superlink=server,
        local_port=free_port(),
        node_config=SiteNodeConfig(
            data_path=str(data), site_name=site_name, task=task_name, state_dir=str(state),
            events_file=str(events_file), dp=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
            accountant=accountant, site_metrics=site_metrics, allow_repeats=allow_repeated_rounds,
            metrics_cost=metrics_cost, device=device,
            allowed_tasks=",".join(sorted({*allow_task, *site_allowed_tasks(data)})),
        ).to_flower(),
        log_path=state / "supernode.log",
        root_certificates=site_kit.ca_cert if site_kit is not None else None,
        auth_private_key=site_kit.node_key if site_kit is not None else None,
        max_wait_time=max(connect_timeout, 60.0),
        threads=threads,
    )
    log_start = node.log_path.stat().st_size if node.log_path.exists() else 0
    node.start()
    offset = 0
    outcome: str | None = None
    restarts = 0
    try:
        console.print(f"connected; waiting for the coordinator to start a round (SuperNode log: {node.log_path})")
        while outcome is None:
            events, offset = read_new(events_file, offset)
            for event in events:
                outcome = _show(event) or outcome
            code = node.poll()
            if code is not None and outcome is None and restarts < MAX_PORT_RESTARTS \
                    and _port_taken(node.log_path, log_start):
                # its local port was taken between choosing and binding it: it never reached the server
                node.stop()
                node.local_port = free_port()
                console.print(f"the SuperNode's local port was taken by another process; restarting it on "
                              f"port {node.local_port}")
                log_start = node.log_path.stat().st_size
                restarts += 1
                node.start()
                continue
            if code is not None and outcome is None:
                if site_kit is not None and _auth_refused(node.log_path, log_start):
                    raise FedShieldError(f"the server refused this site's key: {site_name} is not enrolled in its "
                                         "federation or was revoked; ask the coordinator (fl-server add-site)")
                raise FedShieldError(f"the site's SuperNode stopped (exit {code}): {last_line(node.log_path)}; "
                                     f"full log {node.log_path}")
            time.sleep(0.2)
        if outcome is not None and not outcome.startswith("refused"):
            _wait_replies_sent(node.log_path, log_start)
    finally:
        node.stop()
        events_file.unlink(missing_ok=True)
    if outcome is not None and outcome.startswith("refused"):
        raise FedShieldError(outcome.removeprefix("refused: "))
    if outcome != "finished":
        raise FedShieldError(f"the coordinator ended the run with status {outcome}; see its results.json")
    console.print("run complete; this site's data never left this machine")


def _wait_replies_sent(log_path: Path, since: int, timeout: float = 10.0) -> None:
    """Let the SuperNode deliver its last reply (the run-complete answer) before it is stopped.

    The ClientApp reports the end of the run before its reply has left the SuperNode; stopping the
    SuperNode at once could cut that reply in half, and the server would then spend minutes retrying
    to pull it (Flower retries a missing object up to 500 times). Flower 1.41's SuperNode logs
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


def _show(event: dict) -> str | None:
    """Print one site event; return the run's final status on ``run-complete``."""
    kind = event.get("event")
    rnd = event.get("round")
    if kind == "joined-run":
        console.print(f"joined run {event.get('run_id')} ({event.get('task')})")
    elif kind == "train-start":
        console.print(f"round {rnd}: training on {event.get('examples')} examples"
                      f"{' with DP-SGD' if event.get('dp') else ' WITHOUT DP'} "
                      f"({event.get('device', 'cpu')}, {event.get('threads', '?')} thread(s)) ...")
    elif kind == "train-end":
        eps = event.get("epsilon")
        console.print(f"round {rnd}: train loss {event.get('loss', float('nan')):.4f} in {event.get('seconds', 0):.1f} s"
                      + (f", ε spent {eps:.3f}" if isinstance(eps, (int, float)) else ""))
    elif kind == "evaluate":
        shown = {k: v for k, v in event.items() if k in ROUND_METRICS}
        console.print(f"round {rnd}: validation " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    elif kind == "error":
        console.print(f"[red]round {rnd} {event.get('stage')}: {event.get('message')}[/]")
    elif kind == "notice":
        console.print(f"[yellow]{event.get('message')}[/]")
    elif kind == "refused":
        console.print(f"[red]{event.get('message')}[/]")
        return f"refused: {event.get('message')}"
    elif kind == "run-complete":
        return str(event.get("status", "finished"))
    return None


@app.command()
@guarded
def privacy(
    data: Path = typer.Option(..., "--data", help="The site's data folder."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="State folder (default DATA/.fedshield)."),
    json_out: bool = typer.Option(False, "--json", help="Print the ledger as JSON."),
) -> None:
    """Print the site's privacy ledger: every round trained, ε spent and ε left."""
    from fedshield.client.privacy_ledger import LEDGER_FILE, PrivacyLedger

    state = (state_dir or data / ".fedshield")
    path = state / LEDGER_FILE
    if not path.exists():
        console.print(f"{path}: no privacy ledger yet; this site has not trained with DP on this data")
        return
    import json as _json

    ledger = PrivacyLedger.open(state, epsilon_budget=None, delta=None, accountant=None)
    raw = _json.loads(path.read_text())
    spent = ledger.epsilon_spent()
    if json_out:
        console.print_json(_json.dumps({**raw, "epsilon_spent": spent,
                                         "epsilon_left": max(0.0, ledger.epsilon_budget - spent)}))
        return
    from rich.table import Table

    table = Table(title=f"privacy ledger {path}")
    for col in ("run", "round", "release", "steps", "sample rate", "σ", "statistics σ", "status"):
        table.add_column(col)
    for e in ledger.entries:
        stats = "EXACT" if e.exact_statistics else (f"{e.statistics_noise:.2f}" if e.statistics_noise else "-")
        table.add_row(e.run_id or "-", str(e.round) if e.kind != "count" else "-",
                      e.kind + (f" #{e.release}" if e.release > 1 else ""), str(e.steps) if e.steps else "-",
                      f"{e.sample_rate:.4f}" if e.steps else "-", f"{e.noise_multiplier:.3f}" if e.steps else "-",
                      stats, e.status)
    console.print(table)
    console.print(f"{data.name}: ε spent {spent:.4f} of budget {ledger.epsilon_budget:g} at δ={ledger.delta:.2e}; "
                  f"ε left {max(0.0, ledger.epsilon_budget - spent):.4f}")
    reserved = ledger.reserved(exclude_run=None)
    if reserved:
        console.print(f"open runs reserve ε up to {ledger.epsilon_spent(reserved):.4f} in all "
                      f"({', '.join(k for k, v in ledger.plans.items() if not v.closed)})")
    if ledger.exact_releases():
        console.print(f"[yellow]{ledger.exact_releases()} release(s) carried EXACT statistics (--site-metrics exact or "
                      "an older FedShield): ε does not cover those[/]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
