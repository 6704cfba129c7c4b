"""Signed meter values (OCMF): verified, compared with the reading kept, pages counted.

Samples stay as they arrived (``MeterSample.signed_data`` verbatim); this only reports.
A value fails when its signature does not verify with the meter's public key, when the
signed reading differs from the reading gridflex stored, or when it cannot be parsed.
Page counters (``PG``, e.g. ``T12``) must run without gaps per meter and series: a
missing page means a signed record was lost.  The operator registers each meter's public
key and algorithm in a ``meter_keys`` file (TOML or JSON, keyed by the OCMF meter serial
``MS``, which the signature covers); a key embedded in a record is never trusted.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyocmf import OCMF, PublicKey, PyOCMFError, SignatureMethod
from sqlalchemy import text

from aggregator.config_fields import FieldReader
from aggregator.export import COLUMNS, chain_table, settlement_table
from aggregator.ledger import Ledger, SessionEnergy, from_us, to_us
from aggregator.model import Measurand, MeterSample, ModelError

_UNIT_WH = {"Wh": 1.0, "kWh": 1000.0}
_PAGE = re.compile(r"^([A-Z])(\d+)$")


class MeterKeyError(ModelError):
    """A bad ``meter_keys`` file; the message names the dotted field."""


@dataclass(frozen=True)
class MeterKey:
    """A meter's registered public key (hex DER) and the algorithm it must sign with."""

    meter_serial: str
    public_key: str
    algorithm: SignatureMethod


_fields = FieldReader(MeterKeyError)
DEFAULT_ALGORITHM = SignatureMethod.SECP256R1_SHA256


def load_meter_keys(path: Path) -> dict[str, MeterKey]:
    """Read a ``meter_keys`` file: ``.json`` as JSON, anything else as TOML."""
    try:
        raw = path.read_text()
    except OSError as err:
        raise MeterKeyError("meter_keys", f"cannot read {path}: {err}") from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise MeterKeyError("meter_keys", f"{path} is not valid "
                            f"{'JSON' if path.suffix == '.json' else 'TOML'}: {err}") from None
    return meter_keys_from_mapping(data)


def meter_keys_from_mapping(data: Any) -> dict[str, MeterKey]:
    """Validate ``{"meters": {SERIAL: {"public_key": ..., "algorithm": ...}}}``.

    ``public_key`` is the meter's DER public key, hex or base64; ``algorithm`` an OCMF
    signature algorithm (default ECDSA-secp256r1-SHA256) whose curve the key must be on.
    """
    table = _fields.table(data, "meter_keys")
    _fields.no_unknown(table, {"meters"}, "meter_keys")
    meters = _fields.table(table.get("meters", {}), "meters")
    if not meters:
        raise MeterKeyError("meters", "register at least one meter's public key")
    keys: dict[str, MeterKey] = {}
    for serial, entry in meters.items():
        where = f"meters.{json.dumps(serial)}"
        if not isinstance(serial, str) or not serial.strip():
            raise MeterKeyError(where, "a meter serial must be a non-empty string")
        entry = _fields.table(entry, where)
        _fields.no_unknown(entry, {"public_key", "algorithm"}, where)
        name = entry.get("algorithm", DEFAULT_ALGORITHM.value)
        try:
            algorithm = SignatureMethod(name)
        except ValueError:
            raise MeterKeyError(f"{where}.algorithm", f"one of "
                                f"{[m.value for m in SignatureMethod]}, got {name!r}") from None
        encoded = _fields.text(entry, "public_key", where)
        try:
            key = PublicKey.from_string(encoded)
        except (PyOCMFError, ValueError) as err:
            raise MeterKeyError(f"{where}.public_key", f"not a DER EC public key (hex or "
                                f"base64): {err}") from None
        if not key.matches_signature_algorithm(algorithm):
            raise MeterKeyError(f"{where}.algorithm", f"{algorithm.value} does not fit the "
                                f"key's curve {key.curve.value}")
        keys[serial] = MeterKey(serial, key.key, algorithm)
    return keys


@dataclass(frozen=True)
class SignedCheck:
    """The verdict on one signed sample; ``valid`` is None when no public key is known."""

    sample: MeterSample
    valid: bool | None
    reason: str
    meter_serial: str | None = None
    page: str | None = None


def check_signed(samples: Iterable[MeterSample], public_keys: Mapping[str, str | MeterKey],
                 *, tolerance_wh: float = 0.5) -> list[SignedCheck]:
    """Verify every sample that carries OCMF data; ``public_keys`` maps meter serial (MS)
    to the meter's public key (hex or base64 DER, or a registered ``MeterKey`` whose
    algorithm the record must use), obtained out of band."""
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
        if isinstance(key, MeterKey):
            if key.algorithm != record.signature.SA:
                checks.append(SignedCheck(sample, False, f"signed with {record.signature.SA}, "
                                          f"meter registered for {key.algorithm.value}",
                                          serial, page))
                continue
            key = key.public_key
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


@dataclass(frozen=True)
class SessionSignatures:
    """The signed values of one session (station, EVSE, transaction) in a period.

    ``failed`` gives one reason per failed value (with its meter time); ``unknown_meters``
    the serials with no registered key (those values are neither verified nor failed).
    """

    station_id: str
    evse_number: int
    transaction_id: str | None
    signed_readings: int
    verified: int
    failed: tuple[str, ...]
    page_gaps: tuple[str, ...]
    unknown_meters: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every signed value verified and no page missing."""
        return self.verified == self.signed_readings and not self.page_gaps


SIGNED_SQL = """
SELECT station_id, evse_number, transaction_id, measured_at_us, measurand, phase, context,
       value, evse_id, received_at_us, signed_data
FROM meter_samples
WHERE signed_data IS NOT NULL AND measured_at_us >= :from_us AND measured_at_us < :to_us
ORDER BY station_id, evse_number, transaction_id, measured_at_us, id
"""


def check_sessions(ledger: Ledger, start: datetime, end: datetime,
                   registry: Mapping[str, MeterKey]) -> list[SessionSignatures]:
    """Check every stored signed value measured in ``[start, end)`` against the registry,
    per session (the stored values are only read, never changed)."""
    with ledger.engine.connect() as connection:
        rows = connection.execute(text(SIGNED_SQL), {"from_us": to_us(start),
                                                     "to_us": to_us(end)}).all()
    by_session: dict[tuple[str, int, str], list[MeterSample]] = {}
    for row in rows:
        by_session.setdefault((row.station_id, int(row.evse_number), row.transaction_id),
                              []).append(MeterSample(
            station_id=row.station_id, evse_number=int(row.evse_number),
            transaction_id=row.transaction_id or None,
            measured_at=from_us(int(row.measured_at_us)), measurand=Measurand(row.measurand),
            value=float(row.value), received_at=from_us(int(row.received_at_us)),
            evse_id=row.evse_id, phase=row.phase or None, context=row.context or None,
            signed_data=row.signed_data))
    return [_session(key, check_signed(samples, registry))
            for key, samples in by_session.items()]


def _session(key: tuple[str, int, str], checks: Sequence[SignedCheck]) -> SessionSignatures:
    return SessionSignatures(
        station_id=key[0], evse_number=key[1], transaction_id=key[2] or None,
        signed_readings=len(checks), verified=sum(1 for c in checks if c.valid),
        failed=tuple(f"{c.sample.measured_at:%Y-%m-%dT%H:%M:%SZ} {c.sample.measurand.value}: "
                     f"{c.reason}" for c in checks if c.valid is False),
        page_gaps=tuple(page_gaps(checks)),
        unknown_meters=tuple(sorted({c.meter_serial or "?" for c in checks
                                     if c.valid is None})))


SIGNATURE_COLUMNS = ["signed_readings", "verified", "failed", "page_gaps", "unknown_meters"]
SIGNED_SESSION_COLUMNS = [*COLUMNS, *SIGNATURE_COLUMNS]
SIGNED_SESSION_TEXT_COLUMNS = ["station_id", "transaction_id", "evse_id", "first_reading",
                               "last_reading", "failed", "page_gaps", "unknown_meters"]


def signed_session_table(sessions: Sequence[SessionEnergy],
                         signatures: Sequence[SessionSignatures]) -> pd.DataFrame:
    """The per-session settlement with its signature verdicts, hash-chained over all its
    columns (``verify_table(table, SIGNED_SESSION_COLUMNS)``); lists joined by "; "."""
    verdicts = {(s.station_id, s.evse_number, s.transaction_id): s for s in signatures}
    table = settlement_table(sessions)[COLUMNS]
    found = [verdicts.get((s.station_id, s.evse_number, s.transaction_id)) for s in sessions]
    table["signed_readings"] = [v.signed_readings if v else 0 for v in found]
    table["verified"] = [v.verified if v else 0 for v in found]
    for name in ("failed", "page_gaps", "unknown_meters"):
        table[name] = ["; ".join(getattr(v, name)) if v else "" for v in found]
    return chain_table(table, SIGNED_SESSION_COLUMNS)
