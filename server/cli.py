"""``fl-server``: start a coordinator (SuperLink + the FedShield run) and inspect runs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fedshield.common import cli_options as opts
from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.cli_groups import with_option_groups
from fedshield.common.cli_support import console, guarded, model_note, print_tasks, set_debug, warn_loudly
from fedshield.common.errors import ConfigError, FedShieldError, RunFolderError
from fedshield.common.run_config import RunConfig
from fedshield.server.federation_commands import register as register_federation_commands

if TYPE_CHECKING:
    from fedshield.server.federation import Federation

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
    json_out: opts.JsonOut = False,
    debug: opts.Debug = False,
) -> None:
    """Start the aggregation server and run ROUNDS rounds of TASK once MIN_CLIENTS sites have joined.

    Example: fl-server start --dir ./federation --task digits-cnn --rounds 5 --min-clients 3 --run-dir ./runs/demo
    """
    set_debug(debug)
    from fedshield.common.net import port_in_use
    from fedshield.common.results_view import ResultsWatcher, round_line, summary_table
    from fedshield.server.federation import Federation
    from fedshield.server.run_status_probe import RunStatusProbe
    from fedshield.server.run_submission import submit, write_app, write_flwr_home
    from fedshield.server.superlink import SuperLink, TlsFiles
    from fedshield.tasks.registry import check_task_name

    for flag, value in (("--epsilon", epsilon), ("--max-grad-norm", max_grad_norm)):
        if value is not None:  # each site's own decision: a coordinator's value would be ignored, so it is refused
            raise ConfigError(f"{flag} is each site's own setting (`fl-client join {flag} ...`); the coordinator "
                              "cannot choose a site's privacy budget or clipping bound: drop it here")
    check_task_name(training.task)  # flags first; torch (resolve_settings below) takes seconds to import
    if insecure and dir is not None:
        raise ConfigError("--insecure and --dir exclude each other; pick one")
    if not insecure and dir is None:
        raise ConfigError("no federation: pass --dir FOLDER (create it with `fl-server init --dir FOLDER "
                          "--server-ip ... --sites ...`), or --insecure for a loopback development run")
    fed = Federation.load(dir) if dir is not None else None
    if fed is not None:
        fed.check_server_files()
        for line in fed.certificate_warnings():
            warn_loudly(line)
        if not fed.enrolled():
            raise ConfigError(f"--dir {dir}: no site is enrolled; add one with fl-server add-site NAME --dir {dir}")
    port = port if port is not None else (fed.port if fed is not None else 9092)
    folder = (run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    _check_run_dir(folder)
    cfg = RunConfig(**training.config_fields(not no_dp), **asdict(central), **asdict(secure_aggregation),
                    min_clients=min_clients, fraction_train=fraction_train, dp=not no_dp,
                    run_dir=str(folder)).validate()
    from fedshield.strategies.registry import make_strategy

    make_strategy(training.strategy)  # unknown strategy: fail now, not inside the server
    from fedshield.tasks.run_settings import resolve_settings  # loads the task: a broken plugin fails here

    settings = resolve_settings(training.task, model=training.model, init_weights=training.init_weights,
                                lr=training.lr, dp=not no_dp)
    cfg.model, cfg.init_weights, cfg.lr = settings.model, settings.init_weights, settings.lr
    cfg.validate()
    if port_in_use(host, port):
        raise ConfigError(f"--port {port}: already in use on {host}; stop what uses it or pick another --port")
    if insecure:
        warn_loudly("--insecure: updates travel WITHOUT encryption and sites are not authenticated; loopback "
                    "development only")
    if no_dp:
        warn_loudly("--no-dp: the run proposes training WITHOUT differential privacy (recorded in results.json)")
    if secure_aggregation.secagg:
        console.print("secure aggregation: SecAgg+ every training round; this server learns only the sum of the "
                      "sites' updates")

    folder.mkdir(parents=True, exist_ok=True)
    tls = TlsFiles(fed.ca_cert, fed.server_cert, fed.server_key) if fed is not None else None
    superlink = SuperLink(host=host, port=port, state_db=None, log_path=folder / "server.log", tls=tls,
                          enable_node_auth=fed is not None, control_token=fed.control_token if fed else None,
                          fleet_ready_file=folder / ".fleet-ready" if fed else None)
    (folder / ".fleet-ready").unlink(missing_ok=True)
    # The coordinator's own CLI calls go over loopback (in the certificate's SANs).
    address = f"127.0.0.1:{port}" if fed is not None or host in ("0.0.0.0", "::") else f"{host}:{port}"
    t0 = time.monotonic()
    superlink.start()
    try:
        app_dir = write_app(folder / "app", cfg, {"join-timeout": join_timeout})
        flwr_home = write_flwr_home(folder / ".flwr", address, root_certificates=fed.ca_cert if fed else None,
                                    control_token=fed.control_token if fed else None)
        if fed is not None:
            node_ids = _register_sites(fed, flwr_home)
            # lets `fl-server revoke-site` unregister a site from this running SuperLink at once
            atomic_write_json(fed.coordinator_file, {"pid": os.getpid(), "flwr-home": str(flwr_home),
                                                     "nodes": node_ids}, mode=0o600)
            (folder / ".fleet-ready").touch()  # sites may now activate (the guard answered 503 so far)
        run_id = submit(app_dir, flwr_home)
        console.print(f"server listening on {host}:{port}; run {run_id}: {training.task}"
                      f"{model_note(training.model, cfg.model)}, {training.rounds} rounds, "
                      f"waiting for {min_clients} site(s). Sites join with:")
        if fed is not None:
            console.print(f"  fl-client join --kit KIT --data DIR      (enrolled: {', '.join(sorted(fed.enrolled()))})")
        else:
            console.print(f"  fl-client join --data DIR --server {address} --insecure")

        def on_status(doc: dict[str, Any]) -> None:
            if doc.get("status") == "waiting-for-sites":
                console.print(f"sites connected: {doc.get('connected', 0)}/{min_clients}")
            elif doc.get("status") == "running":
                console.print(f"all sites connected after {time.monotonic() - t0:.1f} s: "
                              f"{', '.join(sorted(doc.get('sites', {})))}; round 1 starting")

        watcher = ResultsWatcher(folder / "results.json", lambda doc, entry: console.print(round_line(doc, entry)),
                                 on_status=on_status)
        status = None
        doc = None
        next_check = time.monotonic() + 10.0
        probe = RunStatusProbe(flwr_home)
        try:
            while True:
                doc = watcher.poll()
                if doc is not None and doc.get("status") in ("finished", "failed"):
                    break
                # results.json is the fast path; the Control API only every 10 s, to notice a
                # ServerApp that died before it could write its failure.
                if time.monotonic() >= next_check:
                    status = probe(run_id)
                    if status and status.startswith("finished"):
                        doc = watcher.poll()
                        break
                    next_check = time.monotonic() + 10.0
                time.sleep(0.5)
        finally:
            probe.close()
    finally:
        superlink.stop()
        if fed is not None:
            fed.coordinator_file.unlink(missing_ok=True)
    if doc is None or doc.get("status") != "finished":
        reason = (doc or {}).get("error") or status or "unknown"
        raise FedShieldError(f"run failed: {reason}; server log {folder / 'server.log'}")
    console.print(summary_table(doc))
    if json_out:
        console.print_json(json.dumps(doc))
    console.print(f"results: {folder / 'results.json'}  final model: {folder / 'model-final.pt'}")


def _check_run_dir(run_dir: Path) -> None:
    results = run_dir / "results.json"
    if not results.exists():
        return
    try:
        status = json.loads(results.read_text()).get("status")
    except (OSError, ValueError):
        status = "unreadable"
    if status == "finished":
        raise RunFolderError(f"--run-dir {run_dir}: already holds a finished run; pass a new --run-dir")
    raise RunFolderError(f"--run-dir {run_dir}: holds an earlier run (status {status}); pass a new --run-dir "
                         "so its results are not overwritten")


def _register_sites(fed: Federation, flwr_home: Path) -> dict[str, int]:
    """Register every enrolled site's public key with the SuperLink (Flower's SuperNode authentication)."""
    from fedshield.common.atomic_io import atomic_write_text
    from fedshield.server.run_submission import register_sites

    keys = {}
    for site, entry in sorted(fed.enrolled().items()):
        keys[site] = flwr_home / "site-keys" / f"{site}.pub"
        atomic_write_text(keys[site], str(entry["public-key"]) + "\n")
    node_ids = register_sites(keys, flwr_home)
    console.print(f"TLS on; {len(fed.enrolled())} enrolled site key(s) registered; revoked sites are refused")
    return node_ids


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
    json_out: bool = typer.Option(False, "--json", help="Print results.json."),
) -> None:
    """Print a run's state (--run-dir), or a federation's sites and certificates (--dir)."""
    from fedshield.common.results_view import round_line, summary_table

    if dir is not None and run_dir is None:
        _federation_status(dir)
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
        console.print_json(json.dumps(doc))
        return
    console.print(f"run {run_dir}: {doc.get('status')} ({doc.get('mode')}, task {doc.get('task')})")
    for entry in doc.get("rounds", []):
        if "evaluate" in entry:
            console.print(round_line(doc, entry))
    console.print(summary_table(doc))
    if doc.get("error"):
        console.print(f"error: {doc['error']}")


def _federation_status(folder: Path) -> None:
    from fedshield.common import pki
    from fedshield.server.federation import Federation

    fed = Federation.load(folder)
    console.print(f"federation {fed.name} ({fed.id}), server {fed.address}")
    for label, path in (("CA", fed.ca_cert), ("server certificate", fed.server_cert)):
        try:
            v = pki.validity(pki.load_cert(path))
            console.print(f"  {label}: valid {v.not_before:%Y-%m-%d} .. {v.not_after:%Y-%m-%d} "
                          f"({v.days_left():.0f} days left)")
        except (OSError, ValueError) as exc:
            console.print(f"  {label}: unreadable ({exc})")
    for name, entry in sorted(fed.sites.items()):
        when = entry.get("revoked") if entry.get("status") == "revoked" else entry.get("added")
        console.print(f"  site {name}: {entry.get('status')} ({when})")
    for line in fed.certificate_warnings():
        warn_loudly(line)


register_federation_commands(app)  # after start, tasks and status: the order `fl-server --help` lists them in


def main() -> None:
    """The ``fl-server`` console script."""
    app()


if __name__ == "__main__":
    main()
