"""The Ed25519 key that signs an audit log (:mod:`fedshield.common.audit_log`).

A federation's key is ``server/audit.key`` (0600, made by ``fl-server init``, or on first use in a
federation made before audit logs existed), a site's is ``audit.key`` in its state folder, an
``--insecure`` run's is ``audit.key`` in its run folder. The public half is written beside the log as
``audit.pub`` (raw 32 bytes, hex) so ``fl-server audit verify`` can check it; its fingerprint is what a
user pins (``--public-key``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedshield.common.atomic_io import atomic_write_bytes
from fedshield.common.errors import ConfigError

KEY_FILE = "audit.key"
PUBLIC_FILE = "audit.pub"


def ensure_key(path: Path) -> bool:
    """Create an Ed25519 private key at ``path`` (PEM, 0600) unless one is there; True when created.

    Made with ``O_EXCL``, so two processes starting at once keep one key."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def load_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; ``ConfigError`` naming the file if it is missing or not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the audit key ({exc}); restore it from a backup") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 audit key; restore it from a backup")
    return key


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key, 64 hex digits."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def fingerprint(public: str) -> str:
    """A short name for a public key (hex): ``SHA256:`` and the first 16 hex digits of its digest."""
    return "SHA256:" + hashlib.sha256(bytes.fromhex(public)).hexdigest()[:16]


def write_public(key: Ed25519PrivateKey, folder: Path) -> None:
    """Write ``audit.pub`` into ``folder`` unless it already holds this key's public half."""
    target = Path(folder) / PUBLIC_FILE
    text = public_hex(key) + "\n"
    try:
        if target.read_text(encoding="ascii") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_bytes(target, text.encode("ascii"))


def load_public(path: Path) -> Ed25519PublicKey:
    """The public key in ``path``: 64 hex digits (``audit.pub``) or a PEM public key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the audit public key ({exc.strerror})") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not Ed25519")
            return key
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode("ascii").strip()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not an audit public key ({exc}); pass the audit.pub the log was made "
                          "with") from None
