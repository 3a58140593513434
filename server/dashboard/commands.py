"""``fl-server dashboard``: the dashboard of a finished run, or of a simulation's run folder, until Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import typer

from fedshield.common.cli_options import Debug
from fedshield.common.cli_support import console, guarded, set_debug


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to ``fl-server``."""

    @app.command()
    @guarded
    def dashboard(
        run_dir: Path = typer.Option(..., "--run-dir", help="A run folder (`fl-server start --run-dir`, or "
                                     "`fl-sim run`'s)."),
        listen: str = typer.Option("127.0.0.1:8050", "--listen", help="[HOST:]PORT to serve the page on; loopback "
                                   "by default. Any other address needs --dir: the page then asks for the "
                                   "federation's dashboard token and is served over TLS."),
        dir: Path | None = typer.Option(None, "--dir", help="The run's federation folder: enrolled and revoked "
                                        "sites, and the token and certificate a page beyond loopback needs."),
        debug: Debug = False,
    ) -> None:
        """Serve a run's dashboard (sites, rounds, metrics, ε against each site's budget, failures) until Ctrl-C.

        Example: fl-server dashboard --run-dir ./runs/demo   (then open http://127.0.0.1:8050/)
        """
        set_debug(debug)
        from fedshield.common.errors import ConfigError
        from fedshield.server.dashboard.launch import open_dashboard

        if not run_dir.is_dir():
            raise ConfigError(f"--run-dir {run_dir}: no such folder; pass a run folder of fl-server start or fl-sim "
                              "run")
        server = open_dashboard(listen, flag="--listen", run_dir=run_dir, federation_dir=dir, on_note=console.print)
        console.print(f"dashboard of {run_dir.resolve()}: {server.url}  (Ctrl-C stops it)")
        try:
            server.wait()
        finally:
            server.stop()
