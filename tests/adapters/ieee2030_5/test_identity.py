"""LFDI / SFDI: cross-checked against sep2tools on a real SERCA -> MICA -> device chain."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from sep2tools.cert_create import (
    generate_device_certificate,
    generate_key,
    generate_mica,
    generate_serca,
)
from sep2tools.cert_id import get_certificate_lfdi, get_fingerprint, get_sfdi

from adapters.ieee2030_5.identity import (
    IdentityError,
    certificate_der,
    fingerprint,
    identity,
    lfdi,
    lfdi_from_fingerprint,
    same_lfdi,
    sfdi,
    sfdi_check_digit,
    sfdi_from_lfdi,
    sfdi_is_valid,
)

FIXTURE_CLIENT_FINGERPRINT = "b83b6bd0ffdd9e0cfda0ecdb62379a3208d17fc867221a3d11c5be070ac4419f"


@dataclass(frozen=True)
class Chain:
    serca_pem: Path
    mica_pem: Path  # MICA followed by the SERCA
    device_pem: Path  # device certificate followed by MICA and SERCA
    device_der: Path  # the device certificate alone
    other_device_der: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A test PKI as sep2tools builds it (P-256 keys, 2030.5 policies)."""
    folder = tmp_path_factory.mktemp("pki")
    serca_key, _ = generate_key(folder / "serca.key", generate_csr=False)
    serca_pem, _ = generate_serca(serca_key, folder / "serca.pem")
    mica_key, mica_csr = generate_key(folder / "mica.key")
    assert mica_csr is not None
    mica_pem, _ = generate_mica(mica_csr, serca_pem, serca_key, folder / "mica.pem")
    devices = []
    for name in ("evse-a", "evse-b"):
        _, csr = generate_key(folder / f"{name}.key")
        assert csr is not None
        devices.append(generate_device_certificate(csr, mica_pem, mica_key, pen=40732,
                                                   hardware_serial_number=name,
                                                   cert_file=folder / f"{name}.pem"))
    return Chain(serca_pem, mica_pem, devices[0], devices[0].with_suffix(".cer"),
                 devices[1].with_suffix(".cer"))


def test_lfdi_matches_sep2tools_for_pem_and_der(chain: Chain) -> None:
    expected = get_certificate_lfdi(chain.device_der, group=False).lower()
    assert len(expected) == 40
    assert lfdi(chain.device_der.read_bytes()) == expected
    assert lfdi(chain.device_pem.read_bytes()) == expected  # PEM chain: the first certificate
    assert lfdi(chain.device_pem.read_text()) == expected  # PEM as text
    assert get_certificate_lfdi(chain.device_pem, group=False).lower() == expected


def test_sfdi_matches_sep2tools(chain: Chain) -> None:
    digest = get_fingerprint(chain.device_der)
    expected = int(get_sfdi(digest, group=False))
    assert sfdi(chain.device_der.read_bytes()) == expected
    assert sfdi(chain.device_pem.read_bytes()) == expected
    assert sfdi_is_valid(expected)


def test_fingerprint_is_sha256_of_the_der_certificate(chain: Chain) -> None:
    der = chain.device_der.read_bytes()
    assert certificate_der(chain.device_pem.read_bytes()) == der
    assert fingerprint(der) == hashlib.sha256(der).hexdigest()
    assert fingerprint(der) == get_fingerprint(chain.device_der).lower()
    found = identity(der)
    assert found.fingerprint == fingerprint(der)
    assert found.lfdi == found.fingerprint[:40]
    assert found.sfdi == sfdi_from_lfdi(found.lfdi)


def test_each_certificate_of_the_chain_has_its_own_identity(chain: Chain) -> None:
    identities = {lfdi(chain.serca_pem.read_bytes()), lfdi(chain.mica_pem.read_bytes()),
                  lfdi(chain.device_der.read_bytes()), lfdi(chain.other_device_der.read_bytes())}
    assert len(identities) == 4
    assert lfdi(chain.mica_pem.read_bytes()) == get_certificate_lfdi(chain.mica_pem,
                                                                     group=False).lower()


def test_standard_example_sfdi() -> None:
    # IEEE 2030.5 §6.3.4: LFDI 3E4F-45AB-31ED-... gives SFDI 167-261-211-391
    assert sfdi_from_lfdi("3E4F-45AB-31ED-FE5B-67E3-43E5-E456-2E31-984E-23E5") == 167261211391
    assert sfdi_check_digit(16726121139) == 1


@pytest.mark.parametrize(("device_lfdi", "expected_sfdi"), [
    ("b83b6bd0ffdd9e0cfda0ecdb62379a3208d17fc8", 494544315038),  # the aggregator, /edev/0
    ("D1BAE45AEABC08255827C6C778D71883EB3F59DE", 562989807826),  # site A, /edev/1
    ("38B05BC4BC270DE68EDDDCF7D69A8B2C4EFB54D1", 152173107959),  # site B, /edev/2
])
def test_sfdi_agrees_with_the_envoy_fixtures(device_lfdi: str, expected_sfdi: int) -> None:
    assert sfdi_from_lfdi(device_lfdi) == expected_sfdi
    assert sfdi_is_valid(expected_sfdi)
    assert not sfdi_is_valid(expected_sfdi + 1)


def test_lfdi_of_the_fixture_fingerprint_is_lower_case_and_matches_the_server() -> None:
    found = lfdi_from_fingerprint(FIXTURE_CLIENT_FINGERPRINT.upper())
    assert found == "b83b6bd0ffdd9e0cfda0ecdb62379a3208d17fc8"
    assert same_lfdi(found, "B83B6BD0FFDD9E0CFDA0ECDB62379A3208D17FC8")  # envoy echoes upper
    assert not same_lfdi(found, "D1BAE45AEABC08255827C6C778D71883EB3F59DE")


@pytest.mark.parametrize("bad", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAA==\n"
                                 b"-----END CERTIFICATE-----\n", b"\x30\x03\x02\x01\x01"])
def test_not_a_certificate_is_an_identity_error(bad: bytes) -> None:
    with pytest.raises(IdentityError, match="certificate"):
        lfdi(bad)


def test_malformed_identifiers_are_refused() -> None:
    with pytest.raises(IdentityError, match="fingerprint"):
        lfdi_from_fingerprint("abc")
    with pytest.raises(IdentityError, match="lfdi"):
        sfdi_from_lfdi("xyz" * 14)
    with pytest.raises(IdentityError, match="sfdi"):
        sfdi_check_digit(-1)
