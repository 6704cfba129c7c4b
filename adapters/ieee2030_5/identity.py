"""IEEE 2030.5 device identity (§6.3.3-6.3.4): LFDI and SFDI from a certificate.

The certificate fingerprint is SHA-256 over the DER-encoded certificate.  The LFDI is its
first 160 bits as hex; gridflex writes it in lower case because some servers compare it
case-sensitively that way (others, envoy among them, echo it in upper case: compare with
:func:`same_lfdi`).  The SFDI is the first 36 bits as a decimal number with a check digit
appended that makes the sum of all digits a multiple of 10.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_PEM_MARK = b"-----BEGIN CERTIFICATE-----"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class IdentityError(ValueError):
    """A certificate or identifier that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The three forms of one certificate's identity."""

    fingerprint: str  # SHA-256 of the DER certificate, 64 lower-case hex digits
    lfdi: str  # 40 lower-case hex digits
    sfdi: int  # up to 12 decimal digits, check digit last


def certificate_der(certificate: bytes | str) -> bytes:
    """The DER bytes of a certificate given as PEM (the first one of a chain) or DER."""
    data = certificate.encode("ascii", "replace") if isinstance(certificate, str) else certificate
    try:
        if _PEM_MARK in data:
            parsed = x509.load_pem_x509_certificate(data)
            return parsed.public_bytes(serialization.Encoding.DER)
        x509.load_der_x509_certificate(data)  # validates; the given bytes are the DER
        return bytes(data)
    except ValueError as exc:
        raise IdentityError(f"certificate: not a PEM or DER X.509 certificate ({exc})") from None


def fingerprint(certificate: bytes | str) -> str:
    """SHA-256 of the DER certificate, lower-case hex."""
    return hashlib.sha256(certificate_der(certificate)).hexdigest()


def lfdi(certificate: bytes | str) -> str:
    """The LFDI: the fingerprint left-truncated to 160 bits, 40 lower-case hex digits."""
    return lfdi_from_fingerprint(fingerprint(certificate))


def sfdi(certificate: bytes | str) -> int:
    """The SFDI: the first 36 bits of the fingerprint in decimal with the check digit."""
    return sfdi_from_lfdi(lfdi(certificate))


def identity(certificate: bytes | str) -> DeviceIdentity:
    """Fingerprint, LFDI and SFDI of a certificate at once."""
    digest = fingerprint(certificate)
    device_lfdi = lfdi_from_fingerprint(digest)
    return DeviceIdentity(digest, device_lfdi, sfdi_from_lfdi(device_lfdi))


def lfdi_from_fingerprint(digest: str) -> str:
    """The LFDI of a SHA-256 fingerprint (hex, any case, ``-`` or ``:`` separators allowed)."""
    plain = digest.replace("-", "").replace(":", "")
    if not _HEX64.fullmatch(plain):
        raise IdentityError(f"fingerprint: expected 64 hex digits, got {digest!r}")
    return plain[:40].lower()


def sfdi_from_lfdi(device_lfdi: str) -> int:
    """The SFDI of an LFDI (its first 36 bits, i.e. 9 hex digits, plus the check digit)."""
    plain = device_lfdi.replace("-", "")
    if not _HEX40.fullmatch(plain):
        raise IdentityError(f"lfdi: expected 40 hex digits, got {device_lfdi!r}")
    number = int(plain[:9], 16)
    return number * 10 + sfdi_check_digit(number)


def sfdi_check_digit(number: int) -> int:
    """The digit that makes the sum of ``number``'s digits plus itself a multiple of 10."""
    if number < 0:
        raise IdentityError(f"sfdi: expected a non-negative number, got {number}")
    return (10 - sum(int(digit) for digit in str(number)) % 10) % 10


def sfdi_is_valid(value: int) -> bool:
    """True if ``value``'s last digit is the check digit of the digits before it."""
    return value >= 0 and value % 10 == sfdi_check_digit(value // 10)


def lfdi_key(value: str) -> str:
    """An LFDI as a lookup key: lower-case hex without grouping (see :func:`same_lfdi`)."""
    return value.replace("-", "").lower()


def same_lfdi(left: str, right: str) -> bool:
    """Compare two LFDIs the way the standard means them: hex, case and grouping ignored."""
    return lfdi_key(left) == lfdi_key(right)
