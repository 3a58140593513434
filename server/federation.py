"""A federation folder: the CA, the server's certificate, the enrolled sites and one kit per site.

Layout (``fl-server init --dir DIR``)::

    DIR/federation.toml          id, name, server names/IPs/port, sites (status, public key, dates)
    DIR/server/ca.crt  ca.key    the federation CA (key 0600; needed to re-issue the server certificate)
    DIR/server/server.crt .key   the SuperLink's TLS certificate (SANs: the given names + IPs + loopback)
    DIR/server/control.token     secret the coordinator's own Flower CLI presents to the Control API (0600)
    DIR/server/audit.key         Ed25519 key signing the audit logs (0600; made on first use in older folders)
    DIR/audit.jsonl              the federation's audit log (+ audit.head.json, audit.pub): enrollments,
                                 revocations, connections, refusals, runs (fedshield.common.audit_log)
    DIR/server/dashboard.token   read-only secret of a dashboard served beyond loopback (0600)
    DIR/kits/<site>/             what that site needs, nothing more:
        kit.toml                 federation id and name, site name, server address
        ca.crt                   to verify the server
        node.key  node.pub       the site's SuperNode key pair (OpenSSH; private key 0600)

Only public keys of enrolled sites are registered with the SuperLink (Flower's SuperNode
authentication); ``revoke-site`` marks a site revoked, deletes its kit and the server stops
registering it, so its next connection is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import secrets
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedshield.common import pki
from fedshield.common.atomic_io import atomic_write_bytes, atomic_write_text
from fedshield.common.audit_key import KEY_FILE, ensure_key
from fedshield.common.audit_log import AuditLog
from fedshield.common.errors import ConfigError
from fedshield.common.site_kit import KIT_FILE
from fedshield.server.audit_trail import operator

FEDERATION_FILE = "federation.toml"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXPIRY_WARNING_DAYS = 30


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_fingerprint(public_key_line: str) -> str:
    """A site key's short name in the audit log: ``SHA256:`` and 16 hex digits of its OpenSSH line's digest."""
    return "SHA256:" + hashlib.sha256(public_key_line.strip().encode()).hexdigest()[:16]


def check_site_name(name: str) -> str:
    """``name`` if it is a valid site name (it becomes a folder and a certificate name), else ``ConfigError``."""
    if not SITE_NAME.match(name):
        raise ConfigError(f"site name {name!r}: use letters, digits, '_', '.', '-' (up to 64, no leading symbol)")
    return name


@dataclass
class Federation:
    """The parsed ``federation.toml`` of a federation folder."""

    root: Path
    id: str
    name: str
    server_names: list[str]
    server_ips: list[str]
    port: int
    created: str
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- paths -------------------------------------------------------------------------------------
    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def ca_cert(self) -> Path:
        return self.server_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.server_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.server_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.server_dir / "server.key"

    @property
    def control_token(self) -> Path:
        return self.server_dir / "control.token"

    @property
    def dashboard_token(self) -> Path:
        """Read-only token a dashboard bound beyond loopback asks for (0600; ``fl-server start --dashboard``)."""
        return self.server_dir / "dashboard.token"

    @property
    def coordinator_file(self) -> Path:
        """Written by a running ``fl-server start --dir``: its pid, Flower CLI home and site node ids."""
        return self.server_dir / "coordinator.json"

    @property
    def audit_key(self) -> Path:
        return self.server_dir / KEY_FILE

    def audit_log(self) -> AuditLog:
        """The federation's audit log. A federation made before audit logs gets its key now, and the log's
        first entry says so."""
        log = AuditLog(self.root, self.audit_key)
        if ensure_key(self.audit_key):
            log.append("audit key created", federation=self.name, id=self.id, by=operator(),
                       note="the federation existed before it had an audit log; events before this are not in it")
        return log

    def kit_dir(self, site: str) -> Path:
        return self.root / "kits" / site

    @property
    def address(self) -> str:
        """How sites reach the server: the first server name (or IP) and the port."""
        host = (self.server_names or self.server_ips)[0]
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def enrolled(self) -> dict[str, dict[str, Any]]:
        return {n: s for n, s in self.sites.items() if s.get("status") == "enrolled"}

    # -- persistence -------------------------------------------------------------------------------
    def save(self) -> None:
        doc = {"federation": {"id": self.id, "name": self.name, "created": self.created,
                              "server-names": self.server_names, "server-ips": self.server_ips,
                              "port": self.port},
               "sites": self.sites}
        atomic_write_text(self.root / FEDERATION_FILE, tomli_w.dumps(doc))

    @classmethod
    def load(cls, root: Path) -> Federation:
        path = Path(root) / FEDERATION_FILE
        if not path.is_file():
            raise ConfigError(f"--dir {root}: no {FEDERATION_FILE}; create a federation with "
                              f"fl-server init --dir {root} ...")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
            fed = doc["federation"]
            return cls(root=Path(root).resolve(), id=str(fed["id"]), name=str(fed["name"]),
                       server_names=list(fed.get("server-names", [])), server_ips=list(fed.get("server-ips", [])),
                       port=int(fed["port"]), created=str(fed.get("created", "")),
                       sites={str(k): dict(v) for k, v in doc.get("sites", {}).items()})
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a valid federation file ({exc}); restore it from a backup") from None

    # -- operations --------------------------------------------------------------------------------
    def add_site(self, site: str) -> Path:
        """Enroll ``site``: a new node key pair and a kit folder. Returns the kit folder."""
        check_site_name(site)
        if site in self.sites and self.sites[site].get("status") == "enrolled":
            raise ConfigError(f"site {site!r} is already enrolled in {self.root}; revoke-site it first to replace its "
                              "key")
        private, public = pki.new_node_key()
        kit = self.kit_dir(site)
        if kit.exists():
            shutil.rmtree(kit)
        pki.write_private(kit / "node.key", private)
        atomic_write_bytes(kit / "node.pub", public)
        atomic_write_bytes(kit / "ca.crt", self.ca_cert.read_bytes())
        atomic_write_text(kit / KIT_FILE, tomli_w.dumps({"kit": {
            "federation-id": self.id, "federation": self.name, "site": site, "server": self.address,
            "created": _utc_now()}}))
        self.sites[site] = {"status": "enrolled", "added": _utc_now(), "public-key": public.decode().strip()}
        self.save()
        self.audit_log().append("site enrolled", site=site, key=key_fingerprint(public.decode()), by=operator())
        return kit

    def revoke_site(self, site: str) -> None:
        if site not in self.sites:
            raise ConfigError(f"site {site!r} is not part of {self.root}; `fl-server status --dir {self.root}` lists "
                              "the sites")
        if self.sites[site].get("status") == "revoked":
            raise ConfigError(f"site {site!r} is already revoked")
        self.sites[site]["status"] = "revoked"
        self.sites[site]["revoked"] = _utc_now()
        self.save()
        shutil.rmtree(self.kit_dir(site), ignore_errors=True)
        self.audit_log().append("site revoked", site=site, by=operator())

    def read_control_token(self) -> str:
        try:
            return self.control_token.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{self.control_token}: cannot read ({exc.strerror}); the federation folder is "
                              "incomplete; re-create it with fl-server init") from None

    def certificate_warnings(self, now: dt.datetime | None = None) -> list[str]:
        """Problems and near expiries of the CA and server certificate, one line each."""
        out = []
        for label, path in (("CA certificate", self.ca_cert), ("server certificate", self.server_cert)):
            try:
                v = pki.validity(pki.load_cert(path))
            except (OSError, ValueError) as exc:
                out.append(f"{label} {path}: unreadable ({exc})")
                continue
            if (problem := v.problem(now)) is not None:
                out.append(f"{label} {path}: {problem}; re-issue it (fl-server init --renew-server-cert)")
            elif v.days_left(now) < EXPIRY_WARNING_DAYS:
                out.append(f"{label} {path}: expires in {v.days_left(now):.0f} days ({v.not_after:%Y-%m-%d})")
        return out

    def check_server_files(self, now: dt.datetime | None = None) -> None:
        """Refuse to start with a missing, unreadable, expired or not-yet-valid certificate or key."""
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise ConfigError(f"{path}: missing; the federation folder is incomplete (re-create it with fl-server "
                                  "init)")
        try:
            ca, cert = pki.load_cert(self.ca_cert), pki.load_cert(self.server_cert)
            pki.load_private_key(self.server_key)
        except ValueError as exc:
            raise ConfigError(f"{self.server_dir}: a certificate or key is corrupt ({exc}); re-create the "
                              "folder") from None
        for label, path, c in (("CA certificate", self.ca_cert, ca), ("server certificate", self.server_cert, cert)):
            if (problem := pki.validity(c).problem(now)) is not None:
                raise ConfigError(f"{label} {path}: {problem}; renew it with fl-server init --dir {self.root} "
                                  "--renew-server-cert")
        if not pki.signed_by(cert, ca):
            raise ConfigError(f"{self.server_cert}: not signed by {self.ca_cert}; re-create the federation folder")

    def renew_server_cert(self, add_names: list[str] | None = None, add_ips: list[str] | None = None) -> None:
        """Re-issue the server certificate under the same CA; ``add_names``/``add_ips`` join its SANs (and
        ``federation.toml``), for a server that is reached, or listens, at a new address."""
        check_server_addresses(add_names or [], add_ips or [])
        self.server_names = list(dict.fromkeys([*self.server_names, *(add_names or [])]))
        self.server_ips = list(dict.fromkeys([*self.server_ips, *(add_ips or [])]))
        self.save()
        ca_key, ca_cert = pki.load_private_key(self.ca_key), pki.load_cert(self.ca_cert)
        key, cert = pki.issue_server_cert(ca_key, ca_cert, names=self.server_names, ips=self.server_ips)
        pki.write_private(self.server_key, pki.pem_key(key))
        atomic_write_bytes(self.server_cert, pki.pem_cert(cert))
        self.audit_log().append("server certificate renewed", names=self.server_names, ips=self.server_ips,
                                by=operator())


def check_server_addresses(server_names: list[str], server_ips: list[str]) -> None:
    """Refuse an ``--server-ip`` that is not an IP address and a ``--server-name`` that is not a DNS name."""
    for ip in server_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"--server-ip {ip!r}: not an IP address (use --server-name for host names)") from None
    for n in server_names:
        try:
            ipaddress.ip_address(n)
            raise ConfigError(f"--server-name {n!r}: is an IP address; pass it as --server-ip")
        except ValueError:
            pass
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", n):
            raise ConfigError(f"--server-name {n!r}: not a valid DNS name")


def init_federation(root: Path, *, name: str, server_names: list[str], server_ips: list[str], port: int,
                    sites: list[str], ca_days: int = pki.CA_DAYS, server_days: int = pki.SERVER_DAYS) -> Federation:
    """Create a new federation folder; refuses to touch an existing one."""
    root = Path(root).resolve()
    if (root / FEDERATION_FILE).exists() or (root / "server").exists():
        raise ConfigError(f"--dir {root}: already holds a federation; it is never overwritten (pick a new --dir, or "
                          "use add-site / revoke-site)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"--dir {root}: exists and is not an empty folder; pick a new --dir")
    if not server_names and not server_ips:
        raise ConfigError("give the server's address: --server-name NAME and/or --server-ip IP")
    check_server_addresses(server_names, server_ips)
    if len(set(sites)) != len(sites):
        raise ConfigError("--sites: a site name appears twice")
    for s in sites:
        check_site_name(s)
    fed = Federation(root=root, id=secrets.token_hex(8), name=name, server_names=list(server_names),
                     server_ips=list(server_ips), port=port, created=_utc_now())
    ca_key, ca_cert = pki.new_ca(f"{name} ({fed.id})", days=ca_days)
    key, cert = pki.issue_server_cert(ca_key, ca_cert, names=fed.server_names, ips=fed.server_ips, days=server_days)
    # staged where the rename into place stays on one file system: beside a new folder, inside an existing empty
    # one (it may be a mount point: a Docker volume, a separate disk)
    staging = (root / f".init-{secrets.token_hex(4)}" if root.exists()
               else root.parent / f".{root.name}.init-{secrets.token_hex(4)}")
    fed.root = staging
    try:
        pki.write_private(fed.ca_key, pki.pem_key(ca_key))
        atomic_write_bytes(fed.ca_cert, pki.pem_cert(ca_cert))
        pki.write_private(fed.server_key, pki.pem_key(key))
        atomic_write_bytes(fed.server_cert, pki.pem_cert(cert))
        atomic_write_text(fed.control_token, secrets.token_urlsafe(32) + "\n", mode=0o600)
        ensure_key(fed.audit_key)
        atomic_write_text(fed.dashboard_token, secrets.token_urlsafe(32) + "\n", mode=0o600)
        fed.save()
        fed.audit_log().append("federation created", federation=name, id=fed.id, by=operator())
        for s in sites:
            fed.add_site(s)
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():  # an empty folder the user made: move our files in
            for child in staging.iterdir():
                child.rename(root / child.name)
            staging.rmdir()
        else:
            staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fed.root = root
    return fed
