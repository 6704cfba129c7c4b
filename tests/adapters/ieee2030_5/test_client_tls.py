"""The client over real TLS on loopback: TLS 1.2, ECDHE-ECDSA-AES128-CCM8, mutual auth.

Certificates are ECDSA P-256, made here: a CA, the server (IP SAN 127.0.0.1) and the
aggregator client.  A client without a certificate must be refused by the handshake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.ieee2030_5.client import CCM8_CIPHER, Sep2Client
from adapters.ieee2030_5.config import ClientConfig
from adapters.ieee2030_5.controls import SOURCE
from adapters.ieee2030_5.loopback import LoopbackServer
from aggregator.constraints import ConstraintBook

from .test_client import SITE_A_LFDI, SITE_B_LFDI


def _issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
           ip: str | None = None) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _pki(folder: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    ca = _issue("test root", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, ca_name, ca_key, ca=False, ip="127.0.0.1")
    client = _issue("aggregator", client_key, ca_name, ca_key, ca=False)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server_cert"], paths["server_key"] = _write(folder, "server", server, server_key)
    paths["client_cert"], paths["client_key"] = _write(folder, "client", client, client_key)
    return paths


def _server_context(paths: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CCM8_CIPHER)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(paths["ca"]))
    context.load_cert_chain(str(paths["server_cert"]), str(paths["server_key"]))
    return context


def test_tls_ccm8_mutual_auth_and_a_client_without_a_certificate_is_refused(
        tmp_path: Path) -> None:
    paths = _pki(tmp_path)

    async def main() -> None:
        server = LoopbackServer()
        url = await server.start(_server_context(paths))
        config = ClientConfig.from_mapping({
            "server_url": url, "cert_file": str(paths["client_cert"]),
            "key_file": str(paths["client_key"]), "ca_file": str(paths["ca"]),
            "min_poll_s": 1, "request_timeout_s": 10,
            "sites": {"a": {"node_id": "site-a", "lfdi": SITE_A_LFDI},
                      "b": {"node_id": "site-b", "lfdi": SITE_B_LFDI}}})
        book = ConstraintBook(started_at=datetime.now(UTC))
        try:
            async with Sep2Client(config, book) as client:
                outcome = await client.poll_once()
                assert outcome.ok, outcome.reason
            assert book.link_is_up(SOURCE)
            assert server.ciphers and {c[0] for c in server.ciphers} == {CCM8_CIPHER}
            assert {c[1] for c in server.ciphers} == {"TLSv1.2"}
            seen = len(server.requests)
            anonymous = dataclasses.replace(config, cert_file=None, key_file=None)
            lost = ConstraintBook(started_at=datetime.now(UTC))
            async with Sep2Client(anonymous, lost) as client:
                refused = await client.poll_once()
            assert not refused.ok and not lost.link_is_up(SOURCE)
            assert "SSL" in refused.reason or "Connection" in refused.reason, refused.reason
            assert len(server.requests) == seen  # the handshake failed: no request got in
        finally:
            await server.stop()

    asyncio.run(main())
