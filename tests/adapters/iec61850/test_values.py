"""Pure decoding: quality, timestamps, units, schedules, priorities, config errors; fuzzed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.iec61850.config import ConfigError, Ref, ied_from_mapping
from adapters.iec61850.values import (
    ScheduleHeader,
    ScheduleReading,
    ValueRejectedError,
    active_schedule_name,
    check_fresh,
    check_quality,
    decode_limit,
    decode_schedule,
    decode_schedule_header,
    decode_timestamp,
    describe_quality,
    encode_power,
    limit_constraint,
    planned_power_kw,
    power_kw,
    quality_bits,
    resolve,
    schedule_constraints,
)
from aggregator.model import GridConstraint, Schedule

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
IED = ied_from_mapping({
    "name": "gw1", "host": "127.0.0.1", "port": 102, "domain": "GWEVSE1", "node_id": "site-a",
    "limit": {"value": "DESE1.ChaPwrLim.setMag.f[SP]", "quality": "DESE1.ChaPwrLim.q[ST]",
              "time": "DESE1.ChaPwrLim.t[ST]"},
    "schedules": [{"name": "FSCH1", "max_entries": 8}, {"name": "FSCH2", "max_entries": 8}],
    "ttl_s": 60.0, "poll_interval_s": 10.0, "max_power_kw": 100.0})
assert IED.limit is not None and IED.limit.quality and IED.limit.time
LIMIT = IED.limit
Q_REF: Ref = IED.limit.quality
T_REF: Ref = IED.limit.time
FSCH1 = IED.schedules[0]
assert FSCH1.state_quality is not None
SQ_REF: Ref = FSCH1.state_quality


def utc_time(moment: datetime, flags: int = 0) -> bytes:
    """Encode an MMS UtcTime as the IED sends it."""
    seconds = int(moment.timestamp())
    fraction = int((moment.timestamp() - seconds) * (1 << 24))
    return seconds.to_bytes(4, "big") + fraction.to_bytes(3, "big") + bytes([flags])


def test_quality_bits_follow_the_mms_bit_order() -> None:
    # bytes as read from libiec61850 for libiec61850's integer quality (measured)
    assert quality_bits(bytes.fromhex("4000"), "q") == 2
    assert quality_bits(bytes.fromhex("c000"), "q") == 3
    assert quality_bits(bytes.fromhex("0010"), "q") == 0x800
    assert quality_bits(bytes.fromhex("0020"), "q") == 0x400
    assert describe_quality(2) == "invalid"
    assert describe_quality(0x800) == "good+test"
    assert describe_quality(3 | 0x80) == "questionable+old_data"
    assert check_quality(b"\x00\x00", "q") == "good"
    with pytest.raises(ValueRejectedError, match=r"^q: quality not good \(invalid\)$"):
        check_quality(bytes.fromhex("4000"), "q")


def test_timestamps() -> None:
    moment = NOW - timedelta(seconds=3)
    assert abs(decode_timestamp(utc_time(moment), "t") - moment) < timedelta(microseconds=2)
    with pytest.raises(ValueRejectedError, match="clock failure"):
        decode_timestamp(utc_time(moment, 0x40), "t")
    with pytest.raises(ValueRejectedError, match="not synchronized"):
        decode_timestamp(utc_time(moment, 0x20), "t")
    assert decode_timestamp(utc_time(moment, 0x20), "t", accept_unsynchronized=True)
    with pytest.raises(ValueRejectedError, match="not set"):
        decode_timestamp(bytes(8), "t")
    with pytest.raises(ValueRejectedError, match="stale"):
        check_fresh(NOW - timedelta(seconds=121), NOW, 120, 5, "t")
    with pytest.raises(ValueRejectedError, match="in the future"):
        check_fresh(NOW + timedelta(seconds=6), NOW, 120, 5, "t")
    assert check_fresh(NOW + timedelta(seconds=4), NOW, 120, 5, "t")


def test_units_w_and_kw() -> None:
    assert power_kw(11000.0, 0, "v", 100) == 11.0
    assert power_kw(11.0, 3, "v", 100) == 11.0
    assert encode_power(7.4, 0, "v", 100) == pytest.approx(7400.0)
    assert encode_power(7.4, 3, "v", 100) == pytest.approx(7.4)
    for raw, reason in [(math.nan, "finite"), (-1.0, "negative"), (2e5, "maximum"),
                        (True, "expected a number"), ("11", "expected a number")]:
        with pytest.raises(ValueRejectedError, match=reason):
            power_kw(raw, 0, "v", 100)


def test_limit_to_constraint_with_provenance() -> None:
    stamp = NOW - timedelta(seconds=2)
    reading = decode_limit({LIMIT.value: 11000.0, Q_REF: b"\x00\x00",
                            T_REF: utc_time(stamp)}, LIMIT, IED, NOW)
    constraint = limit_constraint(reading, IED, "site-a", NOW)
    assert constraint.import_max_kw == 11.0
    assert constraint.expires_at == NOW + timedelta(seconds=60)
    assert constraint.source_ref.startswith(
        "gw1 GWEVSE1/DESE1.ChaPwrLim.setMag.f = 11000 (11 kW) q=good t=2030-06-01T11:59:58")


def header(name: str, priority: int, start: datetime, interval_s: float = 600,
           entries: int = 1) -> ScheduleHeader:
    return ScheduleHeader(name, 4, priority, entries, interval_s, start, "good")


def test_schedule_decoding_and_rejections() -> None:
    raw: dict[Ref, Any] = {FSCH1.state: 4, SQ_REF: b"\x00\x00", FSCH1.priority: 5,
                           FSCH1.entries: 2, FSCH1.interval: 900,
                           FSCH1.start: utc_time(NOW), FSCH1.value_ref(1): 1000.0,
                           FSCH1.value_ref(2): 2000.0}
    head = decode_schedule_header(raw, FSCH1, IED)
    reading = decode_schedule(head, raw, FSCH1, IED)
    assert reading.values_kw == (1.0, 2.0)
    assert reading.windows()[1][:3] == (NOW + timedelta(seconds=900),
                                        NOW + timedelta(seconds=1800), 2.0)
    changes: list[tuple[dict[Ref, Any], str]] = [
                          ({FSCH1.state: 7}, "unknown schedule state 7"),
                           ({FSCH1.entries: 0}, "running schedule with 0 entries"),
                           ({FSCH1.interval: -5}, "interval must be > 0"),
                           ({FSCH1.interval: 2**40}, "exceed 400 days"),
                           ({FSCH1.start: bytes(8)}, "timestamp not set"),
                           ({FSCH1.state: 4.0}, "expected an integer")]
    for change, reason in changes:
        with pytest.raises(ValueRejectedError, match=reason):
            decode_schedule_header({**raw, **change}, FSCH1, IED)
    del raw[FSCH1.value_ref(2)]
    with pytest.raises(ValueRejectedError, match=r"ValASG2\.setMag\.f: missing"):
        decode_schedule(head, raw, FSCH1, IED)
    not_running = decode_schedule_header({**raw, FSCH1.state: 3, FSCH1.entries: 0}, FSCH1, IED)
    assert not not_running.running


def test_active_schedule_reference() -> None:
    names = ["FSCH1", "FSCH2"]
    assert active_schedule_name("GWEVSE1/FSCH2", names, "a") == "FSCH2"
    assert active_schedule_name("GWEVSE1/FSCH1.SchdSt", names, "a") == "FSCH1"
    assert active_schedule_name("", names, "a") is None
    with pytest.raises(ValueRejectedError, match="dangling reference 'GWEVSE1/FSCH9'"):
        active_schedule_name("GWEVSE1/FSCH9", names, "a")


def test_priority_resolution() -> None:
    low = ScheduleReading(header("FSCH1", 1, NOW, 600, 3), (9.0, 9.0, 9.0))
    high = ScheduleReading(header("FSCH2", 5, NOW + timedelta(minutes=10)), (15.0,))
    windows = resolve([low, high], None, NOW)
    assert [(w.schedule, w.kw, w.entries) for w in windows] == [
        ("FSCH1", 9.0, (1,)), ("FSCH2", 15.0, (1,)), ("FSCH1", 9.0, (3,))]
    # the past is dropped
    later = resolve([low], None, NOW + timedelta(minutes=25))
    assert [(w.start, w.kw) for w in later] == [(NOW + timedelta(minutes=20), 9.0)]
    assert resolve([low], None, NOW + timedelta(hours=1)) == []
    with pytest.raises(ValueRejectedError, match="not running"):
        resolve([low], "FSCH2", NOW)
    constraints = schedule_constraints(windows, [low, high], IED, NOW)
    assert [c.priority for c in constraints] == [1, 5, 1]
    assert constraints[0].expires_at is None


def test_planned_power_from_a_gridflex_schedule() -> None:
    index = pd.date_range(NOW, periods=4, freq="15min", tz="UTC")
    frame = pd.DataFrame({"evse-1": [1.0, 2.0, 3.0, 4.0]}, index=index)
    schedule = Schedule(power_kw=frame, session_power_kw=frame, soc=frame,
                        unmet_kwh=pd.Series(dtype=float), interval=timedelta(minutes=15),
                        objective=0.0, status="optimal", solver_stats={})
    assert planned_power_kw(schedule, "evse-1", NOW + timedelta(minutes=20)) == 2.0
    assert planned_power_kw(schedule, "evse-1", NOW - timedelta(seconds=1)) == 0.0
    assert planned_power_kw(schedule, "evse-1", NOW + timedelta(hours=1)) == 0.0
    with pytest.raises(ValueRejectedError, match="not in the schedule"):
        planned_power_kw(schedule, "evse-9", NOW)
    assert np.isfinite(planned_power_kw(schedule, "evse-1", NOW))


@pytest.mark.parametrize(("change", "field"), [
    ({"port": 0}, "ied.port"),
    ({"domain": ""}, "ied.domain"),
    ({"limit": {"value": "DESE1.ChaPwrLim.setMag.f"}}, "ied.limit.value"),
    ({"limit": {"value": "DESE1.ChaPwrLim.setMag.f[XX]"}}, "ied.limit.value"),
    ({"limit": {"multiplier": 3.0}}, "ied.limit.multiplier"),
    ({"schedules": [{"name": "FSCH1", "value": "FSCH1.ValASG.setMag.f[SP]"}]},
     "ied.schedules[0].value"),
    ({"reports": [{"rcb": "urcb", "covers": ["limit"]}]}, "ied.reports[0].rcb"),
    ({"reports": [{"rcb": "LLN0$RP$x", "covers": ["prices"]}]}, "ied.reports[0].covers"),
    ({"ttl_s": 5.0}, "ied.ttl_s"),
    ({"ttl_s": math.nan}, "ied.ttl_s"),
    ({"colour": "red"}, "ied.colour"),
])
def test_config_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"name": "gw1", "host": "h", "domain": "GWEVSE1", "node_id": "n",
                            "limit": {}, "poll_interval_s": 10.0, "ttl_s": 60.0}
    data.update(change)
    with pytest.raises(ConfigError) as info:
        ied_from_mapping(data)
    assert info.value.field == field


RAW = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                st.binary(max_size=9))


@settings(max_examples=300, deadline=None)
@given(value=RAW, quality=RAW, stamp=st.one_of(RAW, st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(utc_time)), multiplier=st.integers(-24, 24))
def test_any_limit_value_gives_a_constraint_or_a_clear_error(
        value: Any, quality: Any, stamp: Any, multiplier: int) -> None:
    cfg = LIMIT.__class__(LIMIT.value, LIMIT.quality, LIMIT.time, multiplier)
    try:
        reading = decode_limit({LIMIT.value: value, Q_REF: quality, T_REF: stamp}, cfg,
                               IED, NOW)
    except ValueRejectedError as exc:
        assert exc.ref.startswith("GWEVSE1/DESE1.ChaPwrLim.") and exc.reason
        return
    constraint = limit_constraint(reading, IED, "site-a", NOW)
    assert isinstance(constraint, GridConstraint)
    assert constraint.import_max_kw is not None and 0 <= constraint.import_max_kw <= 100


@settings(max_examples=200, deadline=None)
@given(state=st.one_of(st.just(4), RAW), priority=st.one_of(st.integers(-5, 5), RAW),
       entries=st.one_of(st.integers(-2, 10), RAW),
       interval=st.one_of(st.integers(-10, 2**40), RAW),
       values=st.lists(st.one_of(st.floats(-1e6, 1e6), RAW), min_size=0, max_size=8),
       active=st.one_of(st.sampled_from(["", "GWEVSE1/FSCH1", "X/FSCH2"]), RAW))
def test_any_schedule_gives_constraints_or_a_clear_error(
        state: Any, priority: Any, entries: Any, interval: Any, values: list[Any],
        active: Any) -> None:
    raw: dict[Ref, Any] = {FSCH1.state: state, SQ_REF: b"\x00\x00", FSCH1.priority: priority,
                           FSCH1.entries: entries,
                           FSCH1.interval: interval, FSCH1.start: utc_time(NOW)}
    raw.update({FSCH1.value_ref(i): v for i, v in enumerate(values, start=1)})
    try:
        head = decode_schedule_header(raw, FSCH1, IED)
        readings = [decode_schedule(head, raw, FSCH1, IED)] if head.running else []
        name = active_schedule_name(active, ["FSCH1"], "FSCC1.ActSchdRef")
        windows = resolve(readings, name, NOW)
    except ValueRejectedError as exc:
        assert exc.ref and exc.reason
        return
    for constraint in schedule_constraints(windows, readings, IED, NOW):
        assert constraint.import_max_kw is not None and 0 <= constraint.import_max_kw <= 100
        assert constraint.end > constraint.start
