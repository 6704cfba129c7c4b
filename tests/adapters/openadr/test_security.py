"""TLS with client certificates and XML signatures between the VEN and a real VTN."""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from openleadr import utils as oadr_utils

from adapters.openadr.ven import Ven
from adapters.openadr.vtn import Interval, LoopbackVtn
from aggregator.constraints import ConstraintBook
from tests.adapters.openadr.test_ven import in_loop, now, ven_config
from tests.peers.net import free_port

M = timedelta(minutes=1)


class Pki(NamedTuple):
    ca: Path
    vtn_cert: Path
    vtn_key: Path
    ven_cert: Path
    ven_key: Path
    other_cert: Path
    other_key: Path

    @staticmethod
    def fingerprint(cert: Path) -> str:
        return str(oadr_utils.certificate_fingerprint(cert.read_bytes()))


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path) -> Pki:
    """A CA and ECDSA P-256 certificates for the VTN, the VEN and a stranger."""
    start = datetime.now(UTC) - timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("gridflex test CA"))
          .issuer_name(_name("gridflex test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(start + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths: list[Path] = []
    for who in ("vtn", "ven", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(who)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = folder / f"{who}.pem", folder / f"{who}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        paths += [cert_path, key_path]
    return Pki(folder / "ca.pem", *paths)


def tls_vtn(pki: Pki, *, sign: bool = True, expect_ven: Path | None = None) -> LoopbackVtn:
    expected = {"gridflex-test": Pki.fingerprint(expect_ven or pki.ven_cert)}
    return LoopbackVtn(port=free_port(), cert=pki.vtn_cert if sign else None,
                       key=pki.vtn_key if sign else None, http_cert=pki.vtn_cert,
                       http_key=pki.vtn_key, http_ca_file=pki.ca, ven_fingerprints=expected)


def secure_ven(vtn: LoopbackVtn, pki: Pki, tmp_path: Path, *, pin: Path | None = None,
               cert: Path | None = None, key: Path | None = None) -> Ven:
    config = ven_config(vtn, tmp_path, cert=str(cert or pki.ven_cert),
                        key=str(key or pki.ven_key), ca_file=str(pki.ca),
                        vtn_fingerprint=Pki.fingerprint(pin or pki.vtn_cert),
                        require_signed=True)
    return Ven(config, ConstraintBook(started_at=now()))


@in_loop
async def test_signed_messages_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    vtn = tls_vtn(pki)
    await vtn.start()
    ven = secure_ven(vtn, pki, tmp_path)
    try:
        assert vtn.url.startswith("https://")
        assert await ven.register()
        assert vtn.vens["ven-1"].fingerprint == Pki.fingerprint(pki.ven_cert)
        start = now() + 5 * M
        vtn.add_event("ven-1", "signed", "SIMPLE", "level", [Interval(start, 10 * M, 2)],
                      market_context="oadr://dso/caps")
        await ven.poll_once()
        assert vtn.opt_replies == [("ven-1", "signed", "optIn")]
        assert isinstance(ven.book, ConstraintBook)
        assert ven.book.limit_kw("site-a", "import", start) == 80
    finally:
        await ven.stop()
        await vtn.stop()


@in_loop
async def test_a_wrong_vtn_fingerprint_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    vtn = tls_vtn(pki)
    await vtn.start()
    ven = secure_ven(vtn, pki, tmp_path, pin=pki.other_cert)  # pinned to another key
    try:
        with Captured("openleadr") as records:
            assert not await ven.register()
        assert ven.registration_id is None
        assert any("fingerprint was incorrect" in r.getMessage() for r in records)
    finally:
        await ven.stop()
        await vtn.stop()


@in_loop
async def test_an_unsigned_vtn_is_refused_when_signing_is_expected(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    vtn = tls_vtn(pki, sign=False)
    await vtn.start()
    ven = secure_ven(vtn, pki, tmp_path)
    try:
        with Captured("openleadr") as records:
            assert not await ven.register()
        assert ven.registration_id is None
        assert any("could not be parsed or validated" in r.getMessage() for r in records)
    finally:
        await ven.stop()
        await vtn.stop()


@in_loop
async def test_the_vtn_refuses_a_ca_signed_but_unexpected_ven(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    vtn = tls_vtn(pki)  # expects the "ven" certificate
    await vtn.start()
    ven = secure_ven(vtn, pki, tmp_path, cert=pki.other_cert, key=pki.other_key)
    try:
        assert not await ven.register()
        assert vtn.vens == {} and "not expected" in vtn.refused[0]
    finally:
        await ven.stop()
        await vtn.stop()


class Captured:
    """Collect the log records of one logger while the block runs."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append  # type: ignore[method-assign]

    def __enter__(self) -> list[logging.LogRecord]:
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *_: object) -> None:
        self.logger.removeHandler(self.handler)


def test_signing_config_needs_a_pinned_vtn(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vtn_fingerprint"):
        ven_config(LoopbackVtn(port=free_port()), tmp_path, require_signed=True)
