"""OCPP MeterValues (1.6 and 2.x) as ``MeterSample``s, with errors that name the field.

Units are normalised (kWh -> Wh, kW -> W, 2.x multipliers applied); a signed value
(1.6 ``format`` SignedData, 2.x ``signedMeterValue``) is kept verbatim next to its
reading.  Measurands gridflex does not settle on are skipped, not errors.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from aggregator.model import Measurand, MeterSample, parse_utc

_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0, "Percent": 1.0}
_UNITS = {"Wh": ("Wh", "kWh"), "W": ("W", "kW"), "Percent": ("Percent",)}  # by normal unit


def parse_meter_values(meter_values: Any, *, station_id: str, evse_number: int,
                       transaction_id: str | None, received_at: datetime,
                       evse_id: str | None) -> tuple[list[MeterSample], list[str]]:
    """Samples from a (snake_case) ``meter_value`` list, and one error line per bad value."""
    samples: list[MeterSample] = []
    errors: list[str] = []
    if not isinstance(meter_values, list):
        return samples, [f"meter_value: expected a list, got {type(meter_values).__name__}"]
    for i, entry in enumerate(meter_values):
        base = f"meter_value[{i}]"
        try:
            measured_at = parse_utc(entry.get("timestamp") if isinstance(entry, dict) else None,
                                     f"{base}.timestamp")
        except ValueError as err:
            errors.append(str(err))
            continue
        values = entry.get("sampled_value", [])
        if not isinstance(values, list):
            errors.append(f"{base}.sampled_value: expected a list")
            continue
        for j, sampled in enumerate(values):
            path = f"{base}.sampled_value[{j}]"
            try:
                sample = _sample(sampled, path, station_id=station_id, evse_number=evse_number,
                                 transaction_id=transaction_id, measured_at=measured_at,
                                 received_at=received_at, evse_id=evse_id)
            except ValueError as err:
                errors.append(str(err))
                continue
            if sample is not None:
                samples.append(sample)
    return samples, errors


def _sample(sampled: Any, path: str, **known: Any) -> MeterSample | None:
    if not isinstance(sampled, dict):
        raise ValueError(f"{path}: expected an object")
    name = sampled.get("measurand", Measurand.ENERGY_IMPORT.value)
    try:
        measurand = Measurand(name)
    except ValueError:
        return None  # a quantity gridflex does not settle on (current, voltage, ...)
    signed: str | None = None
    raw = sampled.get("value")
    if sampled.get("format") == "SignedData":  # 1.6: the value itself is the signed blob
        return MeterSample(measurand=measurand, value=_signed_reading(raw, path),
                           signed_data=str(raw), context=sampled.get("context"),
                           phase=sampled.get("phase"), **known)
    if isinstance(sampled.get("signed_meter_value"), dict):
        signed = str(sampled["signed_meter_value"].get("signed_meter_data"))
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"{path}.value: not a number: {raw!r}")
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"{path}.value: not a number: {raw!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{path}.value: not a finite number: {raw!r}")
    unit, multiplier = sampled.get("unit"), 0
    if isinstance(sampled.get("unit_of_measure"), dict):
        unit = sampled["unit_of_measure"].get("unit")
        multiplier = sampled["unit_of_measure"].get("multiplier", 0)
    unit = unit or measurand.unit
    if unit not in _UNITS[measurand.unit]:
        raise ValueError(f"{path}.unit: {unit!r} does not fit {measurand.value}")
    if not isinstance(multiplier, int) or isinstance(multiplier, bool) or abs(multiplier) > 9:
        raise ValueError(f"{path}.unit_of_measure.multiplier: bad value {multiplier!r}")
    value = number * _SCALE[unit] * 10.0 ** multiplier
    if measurand is Measurand.SOC and not 0.0 <= value <= 100.0:
        raise ValueError(f"{path}.value: SoC {value} % outside 0..100")
    if measurand in (Measurand.ENERGY_IMPORT, Measurand.ENERGY_EXPORT) and value < 0:
        raise ValueError(f"{path}.value: a register cannot be negative ({value} Wh)")
    return MeterSample(measurand=measurand, value=value, signed_data=signed,
                       context=sampled.get("context"), phase=sampled.get("phase"), **known)


def _signed_reading(raw: Any, path: str) -> float:
    """The reading inside a 1.6 signed value (OCMF ``RV``), kept with the blob itself."""
    text = str(raw)
    if not text.startswith("OCMF|"):
        raise ValueError(f"{path}.value: signed data that is not OCMF")
    try:
        payload = json.loads(text.split("|")[1])
        reading = payload["RD"][0]["RV"]
        unit = payload["RD"][0].get("RU", "kWh")
        return float(reading) * _SCALE.get(unit, float("nan"))
    except (IndexError, KeyError, TypeError, ValueError):
        raise ValueError(f"{path}.value: OCMF payload without a reading (RD[0].RV)") from None
