"""OCPP meter values to MeterSamples: units normalised, bad values named, never a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ocpp.meter import parse_meter_values
from aggregator.model import Measurand

NOW = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)


def parse(values: Any) -> tuple[list[Any], list[str]]:
    return parse_meter_values(values, station_id="CS", evse_number=1, transaction_id="t1",
                              received_at=NOW, evse_id="A-01")


def reading(**sampled: Any) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-11-20T16:15:00+01:00", "sampled_value": [sampled]}]


@pytest.mark.parametrize(("sampled", "measurand", "value"), [
    ({"value": "12.5", "unit": "kWh"}, Measurand.ENERGY_IMPORT, 12_500.0),  # 1.6 default
    ({"value": 3, "measurand": "Power.Active.Import", "unit_of_measure": {
        "unit": "kW", "multiplier": 0}}, Measurand.POWER_IMPORT, 3000.0),
    ({"value": 4, "measurand": "Energy.Active.Export.Register", "unit_of_measure": {
        "unit": "Wh", "multiplier": 3}}, Measurand.ENERGY_EXPORT, 4000.0),
    ({"value": "80", "measurand": "SoC", "unit": "Percent"}, Measurand.SOC, 80.0),
])
def test_units_are_normalised(sampled: dict[str, Any], measurand: Measurand,
                              value: float) -> None:
    samples, errors = parse(reading(**sampled))
    assert errors == []
    assert samples[0].measurand is measurand and samples[0].value == value
    assert samples[0].measured_at == datetime(2026, 11, 20, 15, 15, tzinfo=UTC)  # to UTC
    assert samples[0].received_at == NOW  # meter time and system time kept apart


@pytest.mark.parametrize(("sampled", "message"), [
    ({"value": "x"}, "sampled_value[0].value: not a number"),
    ({"value": "nan"}, "sampled_value[0].value: not a finite number"),
    ({"value": "-1"}, "register cannot be negative"),
    ({"value": "150", "measurand": "SoC"}, "SoC 150.0 % outside 0..100"),
    ({"value": "5", "unit": "W"}, "sampled_value[0].unit: 'W' does not fit"),
    ({"value": 1, "unit_of_measure": {"unit": "Wh", "multiplier": 99}}, "multiplier"),
])
def test_bad_values_are_named(sampled: dict[str, Any], message: str) -> None:
    samples, errors = parse(reading(**sampled))
    assert samples == [] and len(errors) == 1 and message in errors[0]


def test_naive_timestamps_and_other_quantities() -> None:
    samples, errors = parse([{"timestamp": "2026-11-20T16:15:00", "sampled_value": []}])
    assert errors == ["meter_value[0].timestamp: date-time without a UTC offset: "
                      "'2026-11-20T16:15:00'"]
    samples, errors = parse(reading(value="230", measurand="Voltage", unit="V"))
    assert samples == [] and errors == []  # not settled on: skipped, not an error


def test_signed_values_are_kept_verbatim() -> None:
    ocmf = "OCMF|" + json.dumps({"RD": [{"RV": 2.935, "RU": "kWh"}]}) + '|{"SD":"30450221"}'
    samples, errors = parse(reading(value=ocmf, format="SignedData"))
    assert errors == [] and samples[0].value == pytest.approx(2935.0)
    assert samples[0].signed_data == ocmf
    samples, _ = parse(reading(value=2935, signed_meter_value={
        "signed_meter_data": "b64==", "signing_method": "ECDSA", "encoding_method": "OCMF",
        "public_key": "pk"}))
    assert samples[0].signed_data == "b64=="


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["timestamp", "sampled_value", "value", "unit",
                                       "measurand", "unit_of_measure", "multiplier",
                                       "format", "signed_meter_value", "context"]),
                      children, max_size=5), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_input_never_crashes(values: Any) -> None:
    samples, errors = parse(values)
    assert all(s.station_id == "CS" for s in samples)
    assert all(isinstance(e, str) and e.startswith("meter_value") for e in errors)
