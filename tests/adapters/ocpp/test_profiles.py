"""Plans as SetChargingProfile requests: valid against the OCA schemas, never above the plan."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, validate_payload

from adapters.ocpp.profiles import (
    ProfileError,
    ProfileRequest,
    from_rate,
    sent_power_kw,
    set_charging_profile,
    to_rate,
)
from aggregator.model import Evse, OcppVersion

T0 = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
AC16 = Evse("A-09", "site-a", max_import_kw=11.0, ocpp_version=OcppVersion.V16)
AC201 = Evse("A-01", "site-a", max_import_kw=11.0)
V2G21 = Evse("A-11", "site-a", max_import_kw=11.0, max_export_kw=10.0, v2g_capable=True,
             ocpp_version=OcppVersion.V21)


def plan(values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.date_range(T0, periods=len(values), freq=STEP, tz="UTC"))


def request(evse: Evse, values: list[float], **overrides: Any) -> ProfileRequest:
    fields: dict[str, Any] = dict(evse=evse, power_kw=plan(values), interval=STEP,
                                  profile_id=7, stack_level=2, transaction_id="42")
    fields.update(overrides)
    return ProfileRequest(**fields)


def assert_schema_valid(evse: Evse, payload: dict[str, Any]) -> None:
    """The ocpp library's own check against the OCA schema (a coroutine in ocpp 2.1.0)."""
    asyncio.run(validate_payload(Call("msg-1", "SetChargingProfile", payload),
                                 evse.ocpp_version.value))


def test_the_schema_check_does_reject() -> None:
    # guard against a check that passes everything (as an un-awaited coroutine would)
    payload = set_charging_profile(request(AC201, [5.0]))
    del payload["chargingProfile"]["stackLevel"]
    with pytest.raises(OCPPError, match="stackLevel"):
        assert_schema_valid(AC201, payload)


@pytest.mark.parametrize("evse", [AC16, AC201, V2G21])
def test_payloads_are_valid_for_each_version(evse: Evse) -> None:
    payload = set_charging_profile(request(evse, [11.0, 7.4, 7.4, 0.0, 3.0]))
    assert_schema_valid(evse, payload)


def test_ocpp16_shape_and_rounding() -> None:
    payload = set_charging_profile(request(AC16, [11.0, 7.4, 7.4, 0.0]))
    profile = payload["csChargingProfiles"]
    assert payload["connectorId"] == 1
    assert profile["transactionId"] == 42 and profile["chargingProfilePurpose"] == "TxProfile"
    assert profile["validFrom"] == "2026-11-20T16:00:00Z"
    assert profile["validTo"] == "2026-11-20T17:00:00Z"
    schedule = profile["chargingSchedule"]
    assert schedule["duration"] == 3600 and schedule["chargingRateUnit"] == "A"
    # 11 kW / (3 x 230 V) = 15.94 A -> 15.9; 7.4 kW -> 10.72 A -> 10.7 (merged twice)
    assert schedule["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 15.9, "numberPhases": 3},
        {"startPeriod": 900, "limit": 10.7, "numberPhases": 3},
        {"startPeriod": 2700, "limit": 0.0, "numberPhases": 3}]


def test_current_below_the_minimum_becomes_zero() -> None:
    # 4 kW on three phases is 5.8 A, under the 6 A minimum: send 0, never 5.8
    assert to_rate(AC201, 4.0, "A") == 0.0
    assert to_rate(AC201, 4.14, "A") == 6.0
    payload = set_charging_profile(request(AC201, [4.0]))
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period["limit"] == 0.0


def test_watts_for_dc_or_when_asked() -> None:
    payload = set_charging_profile(request(AC201, [7.45678], rate_unit="W"))
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 7456.7}
    assert_schema_valid(AC201, payload)


def test_v2g_discharge_only_on_ocpp21() -> None:
    payload = set_charging_profile(request(V2G21, [5.0, -7.0, -7.0, 0.0]))
    assert_schema_valid(V2G21, payload)
    periods = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
    # 7 kW / 690 V = 10.14 A -> 10.1 A discharge, never more than planned
    assert periods[1] == {"startPeriod": 900, "operationMode": "CentralSetpoint",
                          "setpoint": -10.1, "dischargeLimit": -10.1, "limit": 0.0,
                          "numberPhases": 3}
    assert periods[0]["operationMode"] == "ChargingOnly"
    for evse in (AC16, AC201):
        with pytest.raises(ProfileError, match=r"power_kw: EVSE .* cannot discharge"):
            set_charging_profile(request(evse, [5.0, -7.0]))


def test_bad_requests_are_refused_with_the_field_named() -> None:
    with pytest.raises(ProfileError, match="transaction_id"):
        set_charging_profile(request(AC201, [5.0], transaction_id=None))
    with pytest.raises(ProfileError, match="transaction_id"):
        set_charging_profile(request(AC16, [5.0], transaction_id="abc"))
    with pytest.raises(ProfileError, match="power_kw"):
        set_charging_profile(request(AC201, [5.0, float("nan")]))
    naive = pd.Series([1.0], index=pd.date_range("2026-11-20", periods=1, freq=STEP))
    with pytest.raises(ProfileError, match="power_kw"):
        set_charging_profile(request(AC201, [1.0], power_kw=naive))
    with pytest.raises(ProfileError, match="stack_level"):
        set_charging_profile(request(AC201, [1.0], stack_level=-1))
    default = set_charging_profile(request(AC201, [1.0], purpose="TxDefaultProfile",
                                           transaction_id=None))
    assert "transactionId" not in default["chargingProfile"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([AC16, AC201, V2G21]), st.sampled_from(["A", "W"]),
       st.lists(st.floats(-10.0, 11.0, allow_nan=False), min_size=1, max_size=12))
def test_a_profile_never_allows_more_than_the_plan(evse: Evse, unit: str,
                                                   values: list[float]) -> None:
    if not evse.can_discharge:
        values = [max(v, 0.0) for v in values]
    payload = set_charging_profile(request(evse, values, rate_unit=unit))
    assert_schema_valid(evse, payload)
    per_interval = sent_power_kw(evse, payload, unit, STEP, len(values))  # type: ignore[arg-type]
    for planned, sent in zip(values, per_interval, strict=True):
        if planned >= 0:
            assert 0.0 <= sent <= planned + 1e-9  # charge: at most the plan
            step_kw = from_rate(evse, 0.1, unit)  # and lose at most one rounding step,
            floor_kw = from_rate(evse, evse.min_current_a, "A") if unit == "A" else 0.0
            assert sent >= planned - step_kw - 1e-9 or planned < floor_kw + step_kw
        else:
            assert planned - 1e-9 <= sent <= 0.0  # discharge: at most the planned amount


def test_every_evse_of_the_demo_plan_gets_a_valid_profile_within_its_plan() -> None:
    from pathlib import Path

    from aggregator.planning import build_problem, to_schedule
    from aggregator.scenario_file import load_scenario
    from optimizer import solve

    root = Path(__file__).resolve().parents[3]
    scenario = load_scenario(root / "scenarios" / "office-evening-cap.yaml")
    problem, index = build_problem(scenario)
    schedule = to_schedule(solve(problem), problem, index)
    discharging = 0
    for number, evse in enumerate(scenario.tree.evses, start=1):
        planned = schedule.power_kw[evse.evse_id]
        payload = set_charging_profile(ProfileRequest(
            evse=evse, power_kw=planned, interval=scenario.interval, profile_id=number,
            stack_level=1, purpose="TxDefaultProfile"))
        assert_schema_valid(evse, payload)
        sent = np.array(sent_power_kw(evse, payload, "A", scenario.interval, len(planned)))
        wanted = planned.to_numpy()
        within = np.where(wanted >= 0, (sent >= 0) & (sent <= wanted + 1e-9),
                          (sent >= wanted - 1e-9) & (sent <= 0))
        assert within.all(), f"{evse.evse_id}: profile allows more than the plan"
        discharging += int((sent < 0).sum())
    assert discharging > 0  # the demo's V2G EVSEs do discharge, on OCPP 2.1


@pytest.mark.parametrize(("evse", "purpose"), [(AC16, "ChargePointMaxProfile"),
                                               (AC201, "ChargingStationMaxProfile"),
                                               (V2G21, "ChargingStationMaxProfile")])
def test_station_cap_profiles(evse: Evse, purpose: str) -> None:
    payload = set_charging_profile(request(evse, [30.0, 3.0], evse_number=0, purpose=purpose,
                                           transaction_id=None))
    assert_schema_valid(evse, payload)
    periods = (payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
               if evse is AC16 else
               payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"])
    # 30 kW -> 43.4 A; 3 kW -> 4.3 A kept (no per-EVSE minimum on a station-wide cap)
    assert [p["limit"] for p in periods] == [43.4, 4.3]
    assert all("operationMode" not in p for p in periods)
    with pytest.raises(ProfileError, match="power_kw: a station cap cannot be negative"):
        set_charging_profile(request(evse, [-1.0], evse_number=0, purpose=purpose,
                                     transaction_id=None))
    with pytest.raises(ProfileError, match="evse_number"):
        set_charging_profile(request(evse, [1.0], evse_number=1, purpose=purpose,
                                     transaction_id=None))
    wrong = "ChargingStationMaxProfile" if evse is AC16 else "ChargePointMaxProfile"
    with pytest.raises(ProfileError, match="purpose"):
        set_charging_profile(request(evse, [1.0], evse_number=0, purpose=wrong,
                                     transaction_id=None))


def test_readback_is_compared_on_absolute_time_when_the_station_computes_it_later() -> None:
    from adapters.ocpp.profiles import readback_excess

    payload = set_charging_profile(request(V2G21, [11.0, 5.0, -6.0, 11.0], rate_unit="W"))
    late = T0 + timedelta(minutes=1, seconds=22)  # the station's clock when it answered
    shift_s = (late - T0).total_seconds()

    def composite(watts: list[float]) -> dict[str, Any]:
        periods = [{"start_period": 0, "limit": watts[0]}] + [
            {"start_period": int(i * STEP.total_seconds() - shift_s), "limit": w}
            for i, w in enumerate(watts) if i > 0]
        for period in periods:
            if period["limit"] < 0:
                period.update(operation_mode="CentralSetpoint", setpoint=period["limit"],
                              limit=0.0)
        return {"schedule": {"schedule_start": late.isoformat().replace("+00:00", "Z"),
                             "charging_rate_unit": "W", "charging_schedule_period": periods}}

    end = T0 + 4 * STEP
    follows = composite([11000.0, 5000.0, -6000.0, 11000.0])
    assert readback_excess(V2G21, payload, follows, "W", T0, end, 0.05) == []
    more = composite([11000.0, 7000.0, -6000.0, 11000.0])  # charges more in interval 1
    (found,) = readback_excess(V2G21, payload, more, "W", T0, end, 0.05)
    assert T0 + STEP <= found <= T0 + STEP + timedelta(seconds=5)
    deeper = composite([11000.0, 5000.0, -9000.0, 11000.0])  # discharges more than sent
    (found,) = readback_excess(V2G21, payload, deeper, "W", T0, end, 0.05)
    assert T0 + 2 * STEP <= found <= T0 + 2 * STEP + timedelta(seconds=5)
