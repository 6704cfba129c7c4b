"""Signed meter values (OCMF): verified, compared with the reading kept, pages counted.

Samples stay as they arrived (``MeterSample.signed_data`` verbatim); this only reports.
A value fails when its signature does not verify with the meter's public key, when the
signed reading differs from the reading gridflex stored, or when it cannot be parsed.
Page counters (``PG``, e.g. ``T12``) must run without gaps per meter and series: a
missing page means a signed record was lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyocmf import OCMF, PyOCMFError

from aggregator.model import MeterSample

_UNIT_WH = {"Wh": 1.0, "kWh": 1000.0}
_PAGE = re.compile(r"^([A-Z])(\d+)$")


@dataclass(frozen=True)
class SignedCheck:
    """The verdict on one signed sample; ``valid`` is None when no public key is known."""

    sample: MeterSample
    valid: bool | None
    reason: str
    meter_serial: str | None = None
    page: str | None = None


def check_signed(samples: Iterable[MeterSample], public_keys: Mapping[str, str],
                 *, tolerance_wh: float = 0.5) -> list[SignedCheck]:
    """Verify every sample that carries OCMF data; ``public_keys`` maps meter serial (MS)
    to the meter's public key (hex or base64 DER), obtained out of band."""
    checks: list[SignedCheck] = []
    for sample in samples:
        if not sample.signed_data:
            continue
        try:
            record = OCMF.from_string(sample.signed_data)
        except (PyOCMFError, ValueError) as err:
            checks.append(SignedCheck(sample, False, f"not parseable as OCMF: {err}"))
            continue
        serial, page = record.payload.MS, record.payload.PG
        key = public_keys.get(serial or "")
        if key is None:
            checks.append(SignedCheck(sample, None, f"no public key for meter {serial!r}",
                                      serial, page))
            continue
        try:
            verified = record.verify_signature(key)
        except PyOCMFError as err:
            checks.append(SignedCheck(sample, False, f"signature not checkable: {err}",
                                      serial, page))
            continue
        if not verified:
            checks.append(SignedCheck(sample, False, "signature does not match the payload",
                                      serial, page))
            continue
        reading = record.payload.RD[-1] if record.payload.RD else None
        scale = _UNIT_WH.get(str(reading.RU)) if reading is not None else None
        if reading is None or reading.RV is None or scale is None:
            checks.append(SignedCheck(sample, False, "signed payload has no energy reading",
                                      serial, page))
            continue
        signed_wh = float(reading.RV) * scale
        if abs(signed_wh - sample.value) > tolerance_wh:
            checks.append(SignedCheck(sample, False, f"signed reading {signed_wh} Wh differs "
                                      f"from the stored {sample.value} Wh", serial, page))
            continue
        checks.append(SignedCheck(sample, True, "ok", serial, page))
    return checks


def page_gaps(checks: Iterable[SignedCheck]) -> list[str]:
    """Missing page numbers per meter and page series (e.g. ``T``), as readable lines."""
    pages: dict[tuple[str, str], set[int]] = {}
    for check in checks:
        match = _PAGE.match(check.page or "")
        if check.meter_serial is None or match is None:
            continue
        pages.setdefault((check.meter_serial, match.group(1)), set()).add(int(match.group(2)))
    found: list[str] = []
    for (serial, series), numbers in sorted(pages.items()):
        missing = sorted(set(range(min(numbers), max(numbers) + 1)) - numbers)
        if missing:
            names = ", ".join(f"{series}{number}" for number in missing)
            found.append(f"meter {serial}: pages {names} missing")
    return found
