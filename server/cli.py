"""``fl-server``: start a coordinator (SuperLink + the FedShield run) and inspect runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import typer
from click.core import ParameterSource

from fedshield.common import cli_options as opts
from fedshield.common.cli_groups import with_option_groups
from fedshield.common.cli_support import console, guarded, model_note, print_json, print_tasks, set_debug, warn_loudly
from fedshield.common.errors import ConfigError
from fedshield.common.net import join_address
from fedshield.common.run_config import RunConfig
from fedshield.server.audit_commands import register as register_audit_commands
from fedshield.server.dashboard.commands import register as register_dashboard_command
from fedshield.server.federation_commands import register as register_federation_commands

app = typer.Typer(
    help="Coordinate a FedShield federation: start the aggregation server, submit the run, show "
    "round progress, write results.json and checkpoints to the run folder.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
@guarded
@with_option_groups
def start(
    *,
    training: opts.TrainingOptions,
    min_clients: int = typer.Option(
        RunConfig.min_clients, "--min-clients", min=1,
        help="Sites that must join before round 1; later rounds go ahead with the sites still connected (at least 2)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Folder for results.json, checkpoints and logs (default ./runs/<time>)."),
    dir: Path | None = typer.Option(None, "--dir", help="The federation folder from `fl-server init`: TLS, site "
                                    "authentication, only enrolled sites, only this coordinator starts runs."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port sites connect to (default: the "
                                    "federation's, 9092 with --insecure)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP, no site authentication, anyone on the port "
                                  "may submit runs: loopback development only."),
    fraction_train: float = typer.Option(RunConfig.fraction_train, "--fraction-train",
                                         help="Share of connected sites trained per round."),
    epsilon: float | None = typer.Option(None, "--epsilon", hidden=True),
    max_grad_norm: float | None = typer.Option(None, "--max-grad-norm", hidden=True),
    central: opts.CentralDpOptions,
    secure_aggregation: opts.SecAggOptions,
    no_dp: bool = typer.Option(False, "--no-dp", help="Plan the run for training WITHOUT DP (the non-private model and "
                               "learning rate); a proposal only: each site that joined with DP keeps it and says so."),
    join_timeout: float = typer.Option(
        0.0, "--join-timeout", help="Seconds to wait for --min-clients sites (0 = until Ctrl-C)."),
    max_message_mb: float = typer.Option(
        0.0, "--max-message-mb", help="Largest request (MB) the server reads; larger ones are refused unread "
        "(0 = sized from the run: 8 MB, Flower sends models in 5 MB chunks; 64 MB with --secagg, whose "
        "masked updates travel whole; a model too large for it fails before round 1, naming the size)."),
    idle_timeout: float = typer.Option(
        20.0, "--idle-timeout", help="Seconds a connection may stay silent (no TLS handshake, no request, a "
        "stalled upload) before the server closes it."),
    max_connections_per_peer: int = typer.Option(
        64, "--max-connections-per-peer", help="Open connections one address (an IPv6 peer: its /64 network) may "
        "hold; further ones are closed as they open (a site holds one or two; raise it for many sites behind one "
        "NAT address)."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this run folder from its last completed round (after a crash "
        "or a kill): same settings, same run for the sites' privacy ledgers; pass the coordinator's own flags "
        "(--dir or --insecure, --port, ...) again, not the run's."),
    track: opts.Track = None,
    dashboard: str | None = typer.Option(
        None, "--dashboard", help="[HOST:]PORT: serve a live dashboard of the run there (loopback unless a host is "
        "given; any other address asks for the federation's dashboard token and is served over TLS)."),
    json_out: opts.JsonOut = False,
    debug: opts.Debug = False,
) -> None:
    """Start the aggregation server and run ROUNDS rounds of TASK once MIN_CLIENTS sites have joined.

    Example: fl-server start --dir ./federation --task digits-cnn --rounds 5 --min-clients 3 --run-dir ./runs/demo
    """
    set_debug(debug)
    for flag, value in (("--epsilon", epsilon), ("--max-grad-norm", max_grad_norm)):
        if value is not None:  # each site's own decision: a coordinator's value would be ignored, so it is refused
            raise ConfigError(f"{flag} is each site's own setting (`fl-client join {flag} ...`); the coordinator "
                              "cannot choose a site's privacy budget or clipping bound: drop it here")
    from fedshield.common.track_spec import parse_track_specs

    track_specs = parse_track_specs(track)
    from rich.markup import escape

    from fedshield.common.results_view import round_line, summary_table
    from fedshield.server.coordinator import CoordinatorCallbacks, coordinate, plan_resume, plan_run

    if resume is not None:
        settings = {**asdict(training), **asdict(central), **asdict(secure_aggregation), "min_clients": min_clients,
                    "fraction_train": fraction_train, "dp": not no_dp, "run_dir": run_dir}
        plan = plan_resume(resume, _given_run_settings(settings), federation_dir=dir, host=host, port=port,
                           insecure=insecure, join_timeout=join_timeout, on_warning=warn_loudly,
                           max_message_mb=max_message_mb, idle_timeout=idle_timeout,
                           max_connections_per_peer=max_connections_per_peer)
        last, total = plan.resume_after or 0, plan.cfg.rounds
        console.print(f"resuming run {plan.folder} ({plan.cfg.task}) after round {last} of {total}: "
                      + (f"rounds {last + 1}-{total} to go" if last < total else "no round left to train")
                      + "; settings from its results.json")
    else:
        plan = plan_run(training, central, secure_aggregation, min_clients=min_clients,
                        fraction_train=fraction_train, dp=not no_dp, run_dir=run_dir, federation_dir=dir, host=host,
                        port=port, insecure=insecure, join_timeout=join_timeout, on_warning=warn_loudly,
                        max_message_mb=max_message_mb, idle_timeout=idle_timeout,
                           max_connections_per_peer=max_connections_per_peer)
    cfg, asked_model = plan.cfg, training.model if resume is None else plan.cfg.model
    if insecure:
        warn_loudly("--insecure: updates travel WITHOUT encryption and sites are not authenticated; loopback "
                    "development only")
    if not cfg.dp:
        warn_loudly("--no-dp: the run proposes training WITHOUT differential privacy (recorded in results.json)")
    if cfg.secagg:
        console.print("secure aggregation: SecAgg+ every training round; this server learns only the sum of the "
                      "sites' updates")
    elif cfg.trusted_data and not cfg.dp:
        warn_loudly("--trusted-data with --no-dp: without DP noise honest updates can point away from the "
                    "coordinator's as far as a flipped one (measured: cosine -0.28 at Dirichlet 0.5), and such a "
                    "site is refused; the test was measured under DP")
    elif cfg.dp and not cfg.trusted_data and cfg.min_update_cosine == "off":
        warn_loudly("no --trusted-data: updates are checked for shape, values, counts and norm, but a sign-flipped "
                    "update looks like an honest one (three such sites of ten undid most of the learning on digits); "
                    "give --trusted-data DIR (a few dozen labelled examples per class), or --min-update-cosine 0 "
                    "where the sites' data are alike")

    def invite_sites(run_id: int) -> None:
        # escaped: rich takes an IPv6 address's brackets for markup and printed "--server :PORT"
        console.print(f"server listening on {escape(join_address(host, plan.port))}; run {run_id}: {cfg.task}"
                      f"{model_note(asked_model, cfg.model)}, {cfg.rounds} rounds, "
                      f"waiting for {cfg.min_clients} site(s). Sites join with:")
        if plan.federation is not None:
            console.print(f"  fl-client join --kit KIT --data DIR      "
                          f"(enrolled: {', '.join(sorted(plan.federation.enrolled()))})")
        else:
            console.print(f"  fl-client join --data DIR --server {escape(plan.address)} --insecure")

    if dashboard is not None:  # served from a daemon thread until this command ends
        from fedshield.server.dashboard.launch import open_dashboard

        page = open_dashboard(dashboard, flag="--dashboard", run_dir=plan.folder, federation_dir=dir,
                              on_note=console.print)
        console.print(f"dashboard: {page.url}")
    from fedshield.common.run_tracking import open_run_tracking

    tracking = open_run_tracking(track_specs, plan.folder, on_warning=warn_loudly)
    doc = tracking.follow(coordinate, plan, CoordinatorCallbacks(
        sites_registered=lambda count: console.print(
            f"TLS on; {count} enrolled site key(s) registered; revoked sites are refused"),
        run_submitted=invite_sites,
        sites_connected=lambda connected: console.print(f"sites connected: {connected}/{cfg.min_clients}"),
        site_refused=lambda site, reason: console.print(f"[yellow]site {escape(site)} refused: {escape(reason)}[/]",
                                                        soft_wrap=True),
        all_connected=lambda sites, seconds: console.print(
            f"all sites connected after {seconds:.1f} s: {', '.join(sites)}; round {(plan.resume_after or 0) + 1} "
            "starting"),
        round_finished=tracking.after(lambda doc, entry: console.print(round_line(doc, entry))),
    ))
    console.print(summary_table(doc))
    if json_out:
        console.print_json(json.dumps(doc))
    console.print(f"results: {plan.folder / 'results.json'}  final model: {plan.folder / 'model-final.pt'}")


def _given_run_settings(settings: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The run's settings given on this command line: RunConfig field -> (flag, value). ``--no-dp`` gives
    ``dp``; ``--run-dir`` gives the run folder itself."""
    ctx = click.get_current_context()
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.name}
    given = {}
    for name, value in settings.items():
        param = "no_dp" if name == "dp" else name
        if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
            given[name] = (flags.get(param, param), value)
    return given


@app.command()
@guarded
def tasks() -> None:
    """List the tasks this server can run (built-in and third-party plugins): name, data format, metrics.

    A plugin is a package declaring an entry point in the group ``fedshield.tasks`` (docs/writing-a-task.md);
    sites run it only if they allow it (`fl-client join --allow-task NAME`).
    """
    from fedshield.tasks.registry import task_catalogue

    print_tasks(task_catalogue())


@app.command()
@guarded
def status(
    run_dir: Path | None = typer.Option(None, "--run-dir", help="A run folder given to `fl-server start`."),
    dir: Path | None = typer.Option(None, "--dir", help="A federation folder: sites and certificate lifetimes."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable: results.json (--run-dir), or the "
                                  "federation's sites and certificates (--dir) as JSON, nothing else on stdout."),
) -> None:
    """Print a run's state (--run-dir), or a federation's sites and certificates (--dir)."""
    from fedshield.common.results_view import round_line, summary_table

    if dir is not None and run_dir is None:
        _federation_status(dir, json_out)
        return
    if run_dir is None or dir is not None:
        raise ConfigError("pass exactly one of --run-dir RUN_FOLDER or --dir FEDERATION_FOLDER")
    results = run_dir / "results.json"
    if not results.exists():
        raise ConfigError(f"--run-dir {run_dir}: no results.json; is this a run folder of `fl-server start`?")
    try:
        doc = json.loads(results.read_text())
    except ValueError as exc:
        raise ConfigError(f"{results}: not valid JSON ({exc})") from None
    if json_out:
        print_json(doc)
        return
    console.print(f"run {run_dir}: {doc.get('status')} ({doc.get('mode')}, task {doc.get('task')})")
    for entry in doc.get("rounds", []):
        if "evaluate" in entry:
            console.print(round_line(doc, entry))
    console.print(summary_table(doc))
    if doc.get("error"):
        console.print(f"error: {doc['error']}")


def _federation_status(folder: Path, json_out: bool = False) -> None:
    from fedshield.server.federation import Federation
    from fedshield.server.federation_status import federation_status

    doc = federation_status(Federation.load(folder))
    if json_out:
        print_json(doc)
        return
    console.print(f"federation {doc['federation']} ({doc['id']}), server {doc['server']}")
    for label, cert in doc["certificates"].items():
        if "error" in cert:
            console.print(f"  {label}: unreadable ({cert['error']})")
        else:
            console.print(f"  {label}: valid {cert['not_before']} .. {cert['not_after']} ({cert['days_left']} days "
                          "left)")
    for name, site in doc["sites"].items():
        console.print(f"  site {name}: {site['status']} ({site['since']})")
    for line in doc["warnings"]:
        warn_loudly(line)


register_federation_commands(app)  # after start, tasks and status: the order `fl-server --help` lists them in
register_audit_commands(app)
register_dashboard_command(app)


def main() -> None:
    """The ``fl-server`` console script."""
    app()


if __name__ == "__main__":
    main()
