"""Open the dashboard for a run folder: parse ``[HOST:]PORT``, and beyond loopback take the federation's token
and certificate (the token file is written on first use for a federation made before dashboards had one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedshield.common import net, pki
from fedshield.common.errors import ConfigError
from fedshield.server.dashboard.access import ensure_token, read_token
from fedshield.server.dashboard.address import is_loopback, parse_listen
from fedshield.server.dashboard.app import RunSource
from fedshield.server.dashboard.serving import DashboardServer, TlsPair


def open_dashboard(listen: str, *, flag: str, run_dir: Path, federation_dir: Path | None,
                   on_note: Callable[[str], None]) -> DashboardServer:
    """Start serving the dashboard of ``run_dir`` on ``listen``; notes for the user go to ``on_note``.

    Beyond loopback it needs ``federation_dir``: the page asks for ``server/dashboard.token`` and is served
    over TLS with the federation's server certificate, which must name the address (as for ``--host``).
    """
    host, port = parse_listen(listen, flag=flag)
    token, tls = None, None
    if not is_loopback(host):
        if federation_dir is None:
            raise ConfigError(f"{flag} {listen}: a dashboard beyond loopback needs a federation's token and "
                              "certificate; pass --dir FEDERATION, or bind it to loopback (the default)")
        from fedshield.server.federation import Federation

        fed = Federation.load(federation_dir)
        if ensure_token(fed.dashboard_token):
            on_note(f"wrote a dashboard token to {fed.dashboard_token} (0600): this federation was created before "
                    "dashboards had one")
        token = read_token(fed.dashboard_token)
        dialled = net.dial_host(host)
        if not pki.names_host(pki.load_cert(fed.server_cert), dialled):
            raise ConfigError(f"{flag} {listen}: the server certificate {fed.server_cert} does not name {dialled}; "
                              f"add it with fl-server init --dir {fed.root} --renew-server-cert --server-ip {dialled} "
                              "(or --server-name)")
        tls = TlsPair(fed.server_cert, fed.server_key)
    source = RunSource(run_dir.resolve(), federation_dir.resolve() if federation_dir is not None else None)
    return DashboardServer(source, host=host, port=port, token=token, tls=tls, flag=flag).start()
