"""Keys and certificates for a federation, made with ``cryptography`` (no openssl scripts).

* the federation CA: ECDSA P-384, self-signed, ``BasicConstraints(ca=True, path_length=0)``;
* the server certificate: ECDSA P-384 signed by the CA, ``serverAuth``, SANs = every DNS name and IP
  address the server is reached by (plus ``localhost``/``127.0.0.1``/``::1`` for the coordinator's own
  processes, which talk to the SuperLink over loopback);
* a site's node key: ECDSA P-256 in OpenSSH format, the format Flower 1.41's SuperNode authentication
  reads (``--auth-supernode-private-key``; the public half goes to ``flwr supernode register``). The
  SuperNode signs every request it sends with this key and the SuperLink verifies every signature
  (``flwr/supernode/node_auth_http_interceptor.py``, ``flwr/superlink/routers/fleet/node_auth.py``):
  with P-384 that was 0.22 ms to sign and 0.49 ms to verify, per request, on both sides of every
  poll of every site; P-256 (128-bit security, what TLS 1.3 and WebAuthn use by default) takes 0.035
  and 0.064 ms. Flower verifies any NIST curve, so kits made with P-384 keep working.

Private keys are written with mode 0600 from the first byte (see :mod:`fedshield.common.atomic_io`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.common.atomic_io import atomic_write_bytes

CURVE = ec.SECP384R1()  # the CA and the server certificate: used once per TLS handshake
NODE_CURVE = ec.SECP256R1()  # a site's identity key: one signature and one verification per request
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime browsers and most TLS stacks still accept for a leaf
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (written 0600 by :func:`write_private`)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_cert(cert: x509.Certificate) -> bytes:
    """``cert`` as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(federation: str, *, days: int = CA_DAYS,
           not_before: dt.datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA for ``federation`` valid ``days`` days from ``not_before`` (default now)."""
    key = ec.generate_private_key(CURVE)
    start = not_before or _now() - dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
    subject = _name(f"FedShield CA {federation}", "FedShield federation " + federation)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, names: list[str],
                      ips: list[str], days: int = SERVER_DAYS, not_before: dt.datetime | None = None,
                      include_loopback: bool = True) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate signed by the CA whose SANs are ``names`` and ``ips`` (+ loopback)."""
    dns = list(dict.fromkeys([*names, *(LOOPBACK_NAMES if include_loopback else ())]))
    addrs = list(dict.fromkeys([*ips, *(LOOPBACK_IPS if include_loopback else ())]))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]
    key = ec.generate_private_key(CURVE)
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns[0] if dns else addrs[0], "FedShield server"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def new_node_key() -> tuple[bytes, bytes]:
    """A site's SuperNode key pair as (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(NODE_CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def write_private(path: Path, data: bytes) -> None:
    """Write a private key atomically with mode 0600."""
    atomic_write_bytes(path, data, mode=0o600)


def load_cert(path: Path) -> x509.Certificate:
    """The PEM certificate at ``path``; ``ValueError`` if it is not one."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC private key in the PEM file ``path`` (``ValueError`` for any other key type)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def load_node_key(path: Path) -> bytes:
    """The OpenSSH public key line of the node private key at ``path``; ``ValueError`` if unreadable."""
    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC key")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window (UTC)."""

    not_before: dt.datetime
    not_after: dt.datetime

    def days_left(self, now: dt.datetime | None = None) -> float:
        return ((self.not_after - (now or _now())).total_seconds()) / 86400.0

    def problem(self, now: dt.datetime | None = None) -> str | None:
        """Why the certificate is not usable now, or None."""
        now = now or _now()
        if now < self.not_before:
            return f"not valid before {self.not_before:%Y-%m-%d %H:%M} UTC"
        if now >= self.not_after:
            return f"expired on {self.not_after:%Y-%m-%d %H:%M} UTC"
        return None


def validity(cert: x509.Certificate) -> Validity:
    """``cert``'s validity window."""
    return Validity(cert.not_valid_before_utc, cert.not_valid_after_utc)


def san_entries(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the certificate's SubjectAlternativeName."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(ext.get_values_for_type(x509.DNSName)), [str(a) for a in ext.get_values_for_type(x509.IPAddress)]


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries a valid signature of ``ca_cert`` (ECDSA)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
        return True
    except (InvalidSignature, ValueError, TypeError):  # bad signature, other key type, not the issuer
        return False


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether ``cert``'s SubjectAlternativeName lists ``host`` (an IP address, or a DNS name: exactly or under
    a leftmost ``*`` label), as TLS clients check it (RFC 6125)."""
    dns, ips = san_entries(cert)
    try:
        wanted = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.lower().rstrip(".")
        return any(pattern.lower() == name or (pattern.startswith("*.") and "." in name
                                                and name.split(".", 1)[1] == pattern[2:].lower())
                   for pattern in dns)
    return any(ipaddress.ip_address(ip) == wanted for ip in ips)
