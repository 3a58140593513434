"""A site's kit folder (written by ``fl-server init`` / ``add-site``), checked before anything starts.

The kit holds ``kit.toml`` (federation, site name, server address), ``ca.crt`` (the federation CA the
server certificate must chain to) and ``node.key`` (the site's OpenSSH EC key that Flower's SuperNode
authentication signs with). Problems are reported as one line naming the file and the fix.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedshield.common import pki
from fedshield.common.errors import ConfigError

KIT_FILE = "kit.toml"


@dataclass(frozen=True)
class SiteKit:
    """A loaded kit: its folder, federation and site, the server address and the files it holds."""

    folder: Path
    federation_id: str
    federation: str
    site: str
    server: str

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def node_key(self) -> Path:
        return self.folder / "node.key"


def load_kit(folder: Path) -> SiteKit:
    """Read and validate a kit; raise :class:`ConfigError` with the fix on any problem."""
    folder = Path(folder).resolve()
    meta = folder / KIT_FILE
    if not meta.is_file():
        raise ConfigError(f"--kit {folder}: no {KIT_FILE}; pass the folder the coordinator sent you "
                          "(fl-server init / add-site writes kits/<site>/)")
    try:
        doc = tomllib.loads(meta.read_text(encoding="utf-8"))["kit"]
        kit = SiteKit(folder=folder, federation_id=str(doc["federation-id"]), federation=str(doc["federation"]),
                      site=str(doc["site"]), server=str(doc["server"]))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{meta}: not a valid kit file ({exc}); ask the coordinator for a new kit") from None
    if not kit.ca_cert.is_file():
        raise ConfigError(f"{kit.ca_cert}: missing; ask the coordinator for a new kit")
    try:
        ca = pki.load_cert(kit.ca_cert)
    except ValueError:
        raise ConfigError(f"{kit.ca_cert}: not a PEM certificate; ask the coordinator for a new kit") from None
    if (problem := pki.validity(ca).problem()) is not None:
        raise ConfigError(f"{kit.ca_cert}: the federation CA is {problem}; ask the coordinator for a new kit")
    if not kit.node_key.is_file():
        raise ConfigError(f"{kit.node_key}: missing; ask the coordinator for a new kit")
    mode = stat.S_IMODE(os.stat(kit.node_key).st_mode)
    if mode & 0o077:
        raise ConfigError(f"{kit.node_key}: readable by others (mode {mode:o}); run chmod 600 {kit.node_key}")
    try:
        pki.load_node_key(kit.node_key)
    except (ValueError, TypeError):
        raise ConfigError(f"{kit.node_key}: not a readable OpenSSH EC private key (corrupted?); ask the "
                          "coordinator for a new kit") from None
    return kit
