"""``fl-server init | add-site | revoke-site``: create a federation folder and change who is enrolled."""

from __future__ import annotations

from pathlib import Path

import typer

from fedshield.common.cli_options import Debug
from fedshield.common.cli_support import console, guarded, set_debug, warn_loudly

DirOption = typer.Option(..., "--dir", help="The federation folder (created by `fl-server init`).")


def register(app: typer.Typer) -> None:
    """Add the federation commands to ``fl-server``."""

    @app.command(context_settings={"allow_extra_args": True})
    @guarded
    def init(
        ctx: typer.Context,
        dir: Path = typer.Option(..., "--dir", help="New folder for the federation (must not exist or be empty)."),
        server_name: list[str] = typer.Option([], "--server-name", help="DNS name sites use to reach the server "
                                               "(repeatable); goes into the certificate's SANs."),
        server_ip: list[str] = typer.Option([], "--server-ip", help="IP address sites use to reach the server "
                                             "(repeatable); goes into the SANs. Loopback is always included."),
        sites: list[str] = typer.Option([], "--sites", help="Sites to enroll now (space-separated after one "
                                         "--sites, or repeat the flag); more later with add-site."),
        port: int = typer.Option(9092, "--port", min=1, max=65535, help="Port the server will listen on."),
        name: str | None = typer.Option(None, "--name", help="Federation name (default: the folder name)."),
        renew_server_cert: bool = typer.Option(False, "--renew-server-cert", help="Only re-issue the server "
                                               "certificate of an existing federation (same CA, same sites; "
                                               "--server-name/--server-ip given here join its names)."),
        debug: Debug = False,
    ) -> None:
        """Create a federation: CA, server certificate, coordinator token, and one kit per site.

        Example: fl-server init --dir ./federation --server-name fl.example.org --server-ip 10.0.0.5
        --sites hospital_a hospital_b hospital_c

        Send kits/<site>/ to each site (a private key is inside: use a secure channel); keep server/ on the
        coordinator. Nothing is ever overwritten.
        """
        set_debug(debug)
        from fedshield.common.errors import ConfigError
        from fedshield.server.federation import Federation, init_federation

        # `--sites a b c` (click gives the first to --sites, the rest as extra args) or `--sites a,b,c`
        sites = [s for item in [*sites, *ctx.args] for s in item.split(",") if s]
        if ctx.args and not sites:
            raise ConfigError(f"unexpected arguments {' '.join(ctx.args)}; site names follow --sites")

        if renew_server_cert:
            fed = Federation.load(dir)
            _note_new_audit_key(fed)
            fed.renew_server_cert(add_names=server_name, add_ips=server_ip)
            console.print(f"re-issued {fed.server_cert} for {', '.join(fed.server_names + fed.server_ips)}")
            return
        fed = init_federation(dir, name=name or dir.resolve().name, server_names=server_name, server_ips=server_ip,
                              port=port, sites=sites)
        console.print(f"federation {fed.name} ({fed.id}) in {fed.root}")
        console.print(f"  server: {fed.server_dir}/ (CA, certificate for "
                      f"{', '.join(fed.server_names + fed.server_ips)} + loopback, coordinator token)")
        for site in sites:
            console.print(f"  kit for {site}: {fed.kit_dir(site)}/")
        console.print(f"start with: fl-server start --dir {fed.root} --task digits-cnn --rounds 5")
        console.print(f"each site:  fl-client join --kit KIT --data DATA   (server address in the kit: {fed.address})")

    @app.command("add-site")
    @guarded
    def add_site(
        site: str = typer.Argument(..., help="Name of the site to enroll (letters, digits, _ . -)."),
        dir: Path = DirOption,
        debug: Debug = False,
    ) -> None:
        """Enroll a site: a new key pair and a kit folder kits/SITE/ to send it.

        A running coordinator admits it from its next start (sites are registered when the server starts).
        """
        set_debug(debug)
        from fedshield.server.federation import Federation

        fed = Federation.load(dir)
        _note_new_audit_key(fed)
        kit = fed.add_site(site)
        console.print(f"enrolled {site}; send it {kit}/ over a secure channel (it holds the site's private key)")

    @app.command("revoke-site")
    @guarded
    def revoke_site(
        site: str = typer.Argument(..., help="Name of the site to remove."),
        dir: Path = DirOption,
        debug: Debug = False,
    ) -> None:
        """Revoke a site: its key is no longer registered and its kit is deleted; its next connection is refused."""
        set_debug(debug)
        from fedshield.server.federation import Federation

        fed = Federation.load(dir)
        _note_new_audit_key(fed)
        fed.revoke_site(site)
        console.print(f"revoked {site}: its key is never registered again")
        _unregister_from_running_server(fed, site)


def _note_new_audit_key(fed) -> None:
    """Say so when a federation made before audit logs is about to get its audit key and log."""
    if not fed.audit_key.exists():
        warn_loudly(f"{fed.audit_key}: this federation predates audit logs; its audit key is made now and its audit "
                    f"log ({fed.root / 'audit.jsonl'}) starts here")


def _unregister_from_running_server(fed, site: str) -> None:
    """If `fl-server start --dir` is running on this federation, drop the site's key from its SuperLink now."""
    import json
    import os

    from fedshield.server.run_submission import SubmissionError, unregister_site

    try:
        running = json.loads(fed.coordinator_file.read_text())
        os.kill(int(running["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return  # no coordinator running: the next start does not register the site
    node_id = running.get("nodes", {}).get(site)
    if node_id is None:
        return
    try:
        unregister_site(int(node_id), Path(running["flwr-home"]))
    except SubmissionError as exc:
        warn_loudly(f"{exc}; restart the coordinator so the revocation applies")
        return
    console.print(f"the running coordinator (pid {running['pid']}) no longer accepts {site}")
