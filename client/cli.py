"""``fl-client``: join a federation as a site (``join``) and inspect the site's privacy ledger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from fedshield.client.node_config import SiteNodeConfig
from fedshield.client.site_join import RECONNECT_TIMEOUT
from fedshield.common.cli_support import console, guarded, print_json, set_debug, warn_loudly
from fedshield.common.results_view import ROUND_METRICS

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
    data: Path = typer.Option(..., "--data", help="The site's data folder (data.npz, images/<label>/*.png or a CSV, "
                              "plus optional fedshield.toml)."),
    kit: Path | None = typer.Option(None, "--kit", help="This site's kit folder from the coordinator (fl-server init / "
                                    "add-site): CA certificate, site key, server address. TLS + site authentication."),
    server: str | None = typer.Option(None, "--server", help="Coordinator address HOST:PORT (default: the kit's; "
                                      "127.0.0.1:9092 with --insecure)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP without TLS or site authentication: loopback "
                                  "development only."),
    task: str | None = typer.Option(None, "--task", help="Task of this data (default: fedshield.toml or inferred)."),
    target: str | None = typer.Option(None, "--target", help="Tabular target column (overrides fedshield.toml)."),
    name: str | None = typer.Option(None, "--name", help="Site name shown to the coordinator (default: the kit's site, "
                                    "which is the only name a kit may use; the folder's name with --insecure)."),
    epsilon: float = typer.Option(SiteNodeConfig.epsilon, "--epsilon",
                                  help="This site's lifetime ε budget on this data."),
    delta: float = typer.Option(SiteNodeConfig.delta, "--delta", help="δ; 0 picks min(1e-5, 1/(10·N))."),
    max_grad_norm: float = typer.Option(SiteNodeConfig.max_grad_norm, "--max-grad-norm",
                                        help="Per-sample clipping bound C."),
    accountant: str = typer.Option(SiteNodeConfig.accountant, "--accountant",
                                   help="Privacy accountant for the ledger: rdp or prv (Opacus)."),
    no_dp: bool = typer.Option(False, "--no-dp", help="Train WITHOUT differential privacy (explicit opt-out, reported "
                               "to the server)."),
    site_metrics: str = typer.Option(
        SiteNodeConfig.site_metrics, "--site-metrics", help="What replies say about the data besides the update: "
        "dp (losses, metrics and example counts as Gaussian releases inside ε; the default) "
        "or exact (exact values OUTSIDE any ε: development only, recorded in the ledger and results)."),
    allow_repeated_rounds: bool = typer.Option(
        SiteNodeConfig.allow_repeats, "--allow-repeated-rounds", help="Answer a round or evaluation the "
        "coordinator asks for again, counting each repeat in ε (default: refuse it)."),
    metrics_cost: float = typer.Option(
        SiteNodeConfig.metrics_cost, "--metrics-cost", help="How much the private statistics in replies may raise "
        "DP-SGD's noise multiplier (a fraction; larger: more accurate metrics, noisier updates)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Where the site's privacy ledger and logs live "
                                          "(default DATA/.fedshield)."),
    device: str = typer.Option(SiteNodeConfig.device, "--device", help="auto (CUDA when present), cpu or cuda."),
    threads: int = typer.Option(_default_threads(), "--threads", min=1,
                                help="Torch intra-op threads for this site's training."),
    allow_task: list[str] = typer.Option([], "--allow-task", help="Also run this installed third-party task "
                                         "(repeatable; built-in tasks are always allowed; also `allowed-tasks` in "
                                         "fedshield.toml)."),
    connect_timeout: float = typer.Option(30.0, "--connect-timeout",
                                          help="Seconds to wait for the server before giving up."),
    reconnect_timeout: float = typer.Option(
        RECONNECT_TIMEOUT, "--reconnect-timeout", help="Seconds to keep trying when the coordinator goes away "
        "mid-run (a crash, a restart, `fl-server start --resume`); the site rejoins the run when it is back "
        "(0: give up at once)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Validate DATA, connect to the coordinator, train every round it asks for, exit when the run ends.

    Example: fl-client join --kit ./kits/hospital_a --data ./data/hospital_a
    """
    set_debug(debug)
    from fedshield.client.site_join import SiteCallbacks, connect, plan_join, take_part

    plan = plan_join(data=data, kit=kit, server=server, insecure=insecure, task=task, target=target, name=name,
                     dp=not no_dp, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant,
                     site_metrics=site_metrics, allow_repeats=allow_repeated_rounds, metrics_cost=metrics_cost,
                     state_dir=state_dir, device=device, threads=threads, allowed_tasks=allow_task,
                     connect_timeout=connect_timeout, reconnect_timeout=reconnect_timeout)
    site = plan.node_config
    console.print(f"site [bold]{site.site_name}[/]: {plan.train_examples} training / {plan.val_examples} validation "
                  f"examples for task {site.task} ({site.data_path})")
    if insecure:
        warn_loudly("--insecure: this site's updates travel WITHOUT encryption; use only on loopback")
    if no_dp:
        warn_loudly("--no-dp: this site trains WITHOUT differential privacy; its updates can leak its data")
    else:
        shown_delta = "δ=" + (f"{plan.ledger_delta:.1e}" if plan.ledger_delta is not None
                              else f"{delta:.1e}" if delta else "min(1e-5, 1/10N')")
        console.print(f"privacy: DP-SGD, lifetime budget ε={epsilon:g} (spent so far {plan.epsilon_spent:.3f}, "
                      f"{accountant.upper()} accountant, {shown_delta}), clip C={max_grad_norm:g}; "
                      + ("losses, metrics and counts in replies are DP releases inside ε" if site_metrics == "dp"
                         else "metrics in replies are EXACT"))
        if site_metrics == "exact":
            warn_loudly("--site-metrics exact: this site's replies carry EXACT losses, metrics and example counts "
                        "of its data, which no ε covers; recorded in its ledger and in the coordinator's results")
        if allow_repeated_rounds:
            console.print("repeated rounds: answered, and each repeat is counted in ε again (--allow-repeated-rounds)")
    console.print(f"compute: device {device}, {threads} torch intra-op thread(s) per training process "
                  f"(--threads; {os.cpu_count()} cores here, lower it when several sites share a host)")
    console.print(f"connecting to {plan.server} (up to {connect_timeout:g} s) ...")
    connect(plan)
    if plan.kit is not None:
        console.print(f"server certificate verified against federation {plan.kit.federation}'s CA; "
                      f"authenticating as site {plan.kit.site}")
    take_part(plan, SiteCallbacks(
        started=lambda log: console.print(
            f"connected; waiting for the coordinator to start a round (SuperNode log: {log})"),
        port_restarted=lambda port: console.print(
            f"the SuperNode's local port was taken by another process; restarting it on port {port}"),
        reconnecting=lambda left: console.print(
            f"lost the coordinator at {plan.server}; reconnecting (for up to {left:.0f} s more) ..."),
        stale_connection=lambda left: console.print(
            "the coordinator still holds this kit's previous connection (an fl-client join that was killed; it "
            f"is dropped within about a minute); trying again (for up to {left:.0f} s more) ..."),
        event=_show,
    ))
    console.print("run complete; this site's data never left this machine")


def _show(event: dict[str, Any]) -> None:
    """Print one site event (:mod:`fedshield.client.events`)."""
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
        spent = f", ε spent {eps:.3f}" if isinstance(eps, (int, float)) else ""
        console.print(f"round {rnd}: train loss {event.get('loss', float('nan')):.4f} in "
                      f"{event.get('seconds', 0):.1f} s{spent}")
    elif kind == "evaluate":
        shown = {k: v for k, v in event.items() if k in ROUND_METRICS}
        console.print(f"round {rnd}: validation " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    elif kind == "error":
        console.print(f"[red]round {rnd} {event.get('stage')}: {event.get('message')}[/]")
    elif kind == "notice":
        console.print(f"[yellow]{event.get('message')}[/]")
    elif kind == "refused":
        console.print(f"[red]{event.get('message')}[/]")


@app.command()
@guarded
def privacy(
    data: Path = typer.Option(..., "--data", help="The site's data folder."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="State folder (default DATA/.fedshield)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable: the ledger with ε spent, left and "
                                  "reserved, as JSON, nothing else on stdout."),
) -> None:
    """Print the site's privacy ledger: every round trained, ε spent and ε left."""
    from fedshield.client.privacy_ledger import LEDGER_FILE, PrivacyLedger

    state = (state_dir or data / ".fedshield")
    path = state / LEDGER_FILE
    # opened first: a ledger that an anchor says existed is refused, not shown as "none yet"
    ledger = PrivacyLedger.open(state, epsilon_budget=None, delta=None, accountant=None, data_dir=data)
    if not path.exists():
        if json_out:
            print_json({"ledger": None, "path": str(path), "entries": [], "epsilon_spent": 0.0})
            return
        console.print(f"{path}: no privacy ledger yet; this site has not trained with DP on this data")
        return
    import json as _json

    raw = _json.loads(path.read_text())
    spent = ledger.epsilon_spent()
    if json_out:
        reserved = ledger.reserved(exclude_run=None)
        print_json({**raw, "ledger": str(path), "epsilon_spent": spent,
                    "epsilon_left": max(0.0, ledger.epsilon_budget - spent),
                    "epsilon_with_reservations": ledger.epsilon_spent(reserved) if reserved else None,
                    "open_runs": [k for k, v in ledger.plans.items() if not v.closed] if reserved else [],
                    "exact_releases": ledger.exact_releases()})
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
    """The ``fl-client`` console script."""
    app()


if __name__ == "__main__":
    main()
