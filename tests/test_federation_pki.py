"""Provisioning: a federation folder's keys, certificates and kits, and the checks on them."""

import datetime as dt
import os
import socket
import ssl
import stat
import struct
import threading
from pathlib import Path

import pytest
from cryptography import x509

from fedshield.client.tls_preflight import ServerNotTrustedError, check_server_certificate
from fedshield.common import pki
from fedshield.common.errors import ConfigError, ServerUnreachableError
from fedshield.common.site_kit import load_kit
from fedshield.flower_ext.control_guard import decide
from fedshield.server.federation import Federation, init_federation


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return init_federation(tmp_path / "fed", name="test", server_names=["fl.example.org"], server_ips=["10.0.0.5"],
                           port=9092, sites=["hospital_a", "hospital_b"])


def test_init_writes_ca_server_cert_and_kits_with_private_keys_0600(fed: Federation):
    for key in (fed.ca_key, fed.server_key, fed.control_token, fed.kit_dir("hospital_a") / "node.key"):
        assert _mode(key) == 0o600, key
    ca, cert = pki.load_cert(fed.ca_cert), pki.load_cert(fed.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.signed_by(cert, ca)
    names, ips = pki.san_entries(cert)
    assert {"fl.example.org", "localhost"} <= set(names)
    assert {"10.0.0.5", "127.0.0.1", "::1"} <= set(ips)
    kit = load_kit(fed.kit_dir("hospital_a"))
    assert (kit.site, kit.federation_id, kit.server) == ("hospital_a", fed.id, "fl.example.org:9092")
    # the kit's public key is the one the server registers
    assert pki.load_node_key(kit.node_key).decode() == fed.sites["hospital_a"]["public-key"]
    assert not (fed.kit_dir("hospital_a") / "ca.key").exists()


def test_site_keys_are_p256_and_flowers_node_auth_verifies_p256_and_older_p384_keys(fed: Federation):
    """What the SuperNode signs each request with and the SuperLink checks (Flower's own helpers)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import sign_message, uses_nist_ec_curve, verify_signature

    site_key = serialization.load_ssh_private_key((fed.kit_dir("hospital_a") / "node.key").read_bytes(), None)
    assert isinstance(site_key, ec.EllipticCurvePrivateKey) and site_key.curve.name == "secp256r1"
    older = ec.generate_private_key(ec.SECP384R1())  # kits made before P-256
    for key in (site_key, older):
        assert uses_nist_ec_curve(key.public_key())
        signature = sign_message(key, b"2026-12-01T23:00:00+00:00")
        assert verify_signature(key.public_key(), b"2026-12-01T23:00:00+00:00", signature)
        assert not verify_signature(key.public_key(), b"2026-12-01T23:00:01+00:00", signature)


def test_init_never_overwrites_and_rejects_bad_names(fed: Federation, tmp_path: Path):
    with pytest.raises(ConfigError, match="already holds a federation"):
        init_federation(fed.root, name="x", server_names=[], server_ips=["127.0.0.1"], port=1, sites=[])
    with pytest.raises(ConfigError, match="--server-ip"):
        init_federation(tmp_path / "f2", name="x", server_names=[], server_ips=["fl.example.org"], port=1, sites=[])
    with pytest.raises(ConfigError, match="site name"):
        init_federation(tmp_path / "f3", name="x", server_names=[], server_ips=["127.0.0.1"], port=1, sites=["../x"])
    assert not (tmp_path / "f2").exists() and not (tmp_path / "f3").exists()


def test_add_and_revoke_site(fed: Federation):
    fed.add_site("hospital_c")
    assert Federation.load(fed.root).sites["hospital_c"]["status"] == "enrolled"
    old_key = fed.sites["hospital_b"]["public-key"]
    fed.revoke_site("hospital_b")
    reloaded = Federation.load(fed.root)
    assert reloaded.sites["hospital_b"]["status"] == "revoked"
    assert "hospital_b" not in reloaded.enrolled()
    assert not fed.kit_dir("hospital_b").exists()
    with pytest.raises(ConfigError, match="already enrolled"):
        reloaded.add_site("hospital_a")
    reloaded.add_site("hospital_b")  # re-enrolment gets a fresh key, never the revoked one
    assert reloaded.sites["hospital_b"]["public-key"] != old_key


@pytest.mark.parametrize("damage, message", [
    (lambda kit: (kit / "node.key").write_text("garbage"), "not a readable OpenSSH"),
    (lambda kit: os.chmod(kit / "node.key", 0o644), "chmod 600"),
    (lambda kit: (kit / "kit.toml").unlink(), "no kit.toml"),
    (lambda kit: (kit / "ca.crt").write_text("nope"), "not a PEM certificate"),
])
def test_damaged_kit_is_refused_with_the_fix(fed: Federation, damage, message):
    kit = fed.kit_dir("hospital_a")
    damage(kit)
    with pytest.raises(ConfigError, match=message):
        load_kit(kit)


def _reissue(fed: Federation, *, not_before: dt.datetime, days: int) -> None:
    ca_key, ca_cert = pki.load_private_key(fed.ca_key), pki.load_cert(fed.ca_cert)
    key, cert = pki.issue_server_cert(ca_key, ca_cert, names=fed.server_names, ips=fed.server_ips, days=days,
                                      not_before=not_before)
    pki.write_private(fed.server_key, pki.pem_key(key))
    fed.server_cert.write_bytes(pki.pem_cert(cert))


def test_server_refuses_to_start_with_expired_certificate_and_warns_before_expiry(fed: Federation):
    now = dt.datetime.now(dt.UTC)
    _reissue(fed, not_before=now - dt.timedelta(days=10), days=5)
    with pytest.raises(ConfigError, match="expired"):
        fed.check_server_files()
    _reissue(fed, not_before=now - dt.timedelta(days=1), days=10)
    fed.check_server_files()
    assert any("expires in" in w for w in fed.certificate_warnings())
    fed.renew_server_cert()
    assert fed.certificate_warnings() == []


class _TlsServer:
    """A bare TLS listener with a given certificate, for checking what a site accepts; the first ``resets``
    connections are reset before TLS starts, as a proxy in front of a coordinator that is not up yet does."""

    def __init__(self, cert: Path, key: Path, host: str = "127.0.0.1", resets: int = 0) -> None:
        self.resets = resets
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.resets > 0:
                self.resets -= 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


def test_site_refuses_wrong_ca_wrong_name_expired_and_future_certificates(fed: Federation, tmp_path: Path):
    now = dt.datetime.now(dt.UTC)
    server = _TlsServer(fed.server_cert, fed.server_key)
    try:
        check_server_certificate("127.0.0.1", server.port, fed.ca_cert)  # the right CA: accepted
        other = init_federation(tmp_path / "other", name="other", server_names=[], server_ips=["127.0.0.1"],
                                port=1, sites=["x"])
        with pytest.raises(ServerNotTrustedError, match="another federation"):
            check_server_certificate("127.0.0.1", server.port, other.ca_cert)
    finally:
        server.close()
    # a name that is not in the SANs (127.0.0.2 is loopback on Linux but not in the certificate)
    server = _TlsServer(fed.server_cert, fed.server_key, host="127.0.0.2")
    try:
        with pytest.raises(ServerNotTrustedError, match="not valid for '127.0.0.2'"):
            check_server_certificate("127.0.0.2", server.port, fed.ca_cert)
    finally:
        server.close()
    for not_before, days, message in ((now - dt.timedelta(days=10), 5, "expired"),
                                      (now + dt.timedelta(days=3), 30, "not valid yet")):
        _reissue(fed, not_before=not_before, days=days)
        server = _TlsServer(fed.server_cert, fed.server_key)
        try:
            with pytest.raises(ServerNotTrustedError, match=message):
                check_server_certificate("127.0.0.1", server.port, fed.ca_cert)
        finally:
            server.close()


def test_a_site_waits_through_connections_reset_before_tls_and_then_checks_the_certificate(fed: Federation) -> None:
    """A TCP proxy in front of a coordinator that is not up yet accepts and resets: the site keeps trying for its
    --connect-timeout (it used to end at once with a ConnectionResetError traceback) and then checks the
    certificate as usual; with no time left it says in one line that connections are closed before TLS."""
    server = _TlsServer(fed.server_cert, fed.server_key, resets=3)
    try:
        with pytest.raises(ServerUnreachableError, match="closed before TLS starts"):
            check_server_certificate("127.0.0.1", server.port, fed.ca_cert)
        check_server_certificate("127.0.0.1", server.port, fed.ca_cert, wait_s=30)
        assert server.resets == 0
    finally:
        server.close()
    server = _TlsServer(fed.server_cert, fed.server_key, host="127.0.0.2", resets=2)
    try:
        with pytest.raises(ServerNotTrustedError, match="not valid for '127.0.0.2'"):
            check_server_certificate("127.0.0.2", server.port, fed.ca_cert, wait_s=30)
    finally:
        server.close()


@pytest.mark.parametrize("path, peer, auth, allowed", [
    ("/v1/fleet/pull-messages", "10.1.2.3", None, True),
    ("/health", "10.1.2.3", None, True),
    ("/v1/control/start-run", "127.0.0.1", None, False),
    ("/v1/control/start-run", "127.0.0.1", "Bearer wrong-token-wrong-token-wrong-token", False),
    ("/v1/control/start-run", "10.1.2.3", "Bearer " + "t" * 43, True),
    ("/v1/runtime/pull-messages", "10.1.2.3", None, False),
    ("/v1/runtime/pull-messages", "127.0.0.1", None, True),
    ("/docs", "127.0.0.1", None, False),
])
def test_control_guard_lets_only_the_coordinator_use_the_control_api(path, peer, auth, allowed):
    assert (decide(path, peer, auth, "t" * 43) is None) == allowed


def test_control_guard_holds_sites_off_until_their_keys_are_registered():
    assert "registering" in decide("/v1/fleet/activate-node", "10.1.2.3", None, "t" * 43, fleet_ready=False)
    assert decide("/health", "10.1.2.3", None, "t" * 43, fleet_ready=False) is None


def test_the_runtime_api_is_served_to_this_hosts_own_addresses_only():
    """Every loopback address, and the address the SuperLink listens on (the ServerApp beside it dials that
    address and connects from it), never another host."""
    runtime = "/v1/runtime/pull-messages"
    assert decide(runtime, "127.0.0.2", None, "t" * 43) is None
    assert decide(runtime, "::1", None, "t" * 43) is None
    assert decide(runtime, "10.0.0.5", None, "t" * 43, listen_host="10.0.0.5") is None
    assert decide(runtime, "10.0.0.6", None, "t" * 43, listen_host="10.0.0.5") is not None
    assert decide(runtime, "10.0.0.5", None, "t" * 43, listen_host="0.0.0.0") is not None
