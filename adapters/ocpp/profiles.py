"""A planned EVSE power series as an OCPP SetChargingProfile request (1.6, 2.0.1, 2.1).

The same encoder writes a station-wide cap (ChargePointMaxProfile in 1.6,
ChargingStationMaxProfile in 2.x, to connector/EVSE 0): there the minimum current does
not apply (the station shares the cap among its EVSEs) and nothing is negative.

Encoding rules, never decisions:
- limits are rounded *down* to 0.1 of the rate unit, so a profile never allows more
  than the plan (nor discharges more than planned);
- a charging current below the EVSE's minimum becomes 0 (chargers reject 0 < I < 6 A);
- discharge exists only in OCPP 2.1, as ``operationMode`` CentralSetpoint with a negative
  ``setpoint`` and ``dischargeLimit``; asking 1.6 or 2.0.1 to discharge is an error;
- times are UTC (``...Z``); equal consecutive periods are merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pandas as pd

from aggregator.model import Evse, OcppVersion, parse_utc, require_utc

RateUnit = Literal["A", "W"]
Purpose = Literal["TxProfile", "TxDefaultProfile", "ChargePointMaxProfile",
                  "ChargingStationMaxProfile"]
MAX_PURPOSES = {OcppVersion.V16: "ChargePointMaxProfile",
                OcppVersion.V201: "ChargingStationMaxProfile",
                OcppVersion.V21: "ChargingStationMaxProfile"}
TOLERANCE_KW = 1e-6


class ProfileError(ValueError):
    """A plan that cannot be expressed as a profile for this EVSE; names the field."""


@dataclass(frozen=True)
class ProfileRequest:
    """One EVSE's plan and the bookkeeping OCPP needs to carry it.

    ``power_kw`` is indexed by UTC interval starts (+ charge, - discharge); ``evse_number``
    is the station's own numbering (1.6 connectorId, 2.x evseId).
    """

    evse: Evse
    power_kw: pd.Series
    interval: timedelta
    profile_id: int
    stack_level: int
    evse_number: int = 1
    purpose: Purpose = "TxProfile"
    transaction_id: str | None = None
    rate_unit: RateUnit = "A"


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _round_down(value: float) -> float:
    """Down to one decimal, as OCPP limits allow; exact decimals stay exact."""
    return math.floor(round(value * 10.0, 6)) / 10.0


def to_rate(evse: Evse, power_kw: float, unit: RateUnit, *, minimum: bool = True) -> float:
    """A charging power (kW, >= 0) in the rate unit, rounded down; with ``minimum`` a
    current below the EVSE's minimum becomes 0."""
    if unit == "W":
        return _round_down(power_kw * 1000.0)
    current_a = _round_down(power_kw * 1000.0 / (evse.phases * evse.voltage_v))
    return current_a if not minimum or current_a >= evse.min_current_a else 0.0


def from_rate(evse: Evse, value: float, unit: RateUnit) -> float:
    """The power (kW) a limit in the rate unit allows."""
    if unit == "W":
        return value / 1000.0
    return value * evse.phases * evse.voltage_v / 1000.0


def _periods(request: ProfileRequest) -> list[dict[str, Any]]:
    evse, unit = request.evse, request.rate_unit
    version = evse.ocpp_version
    station_cap = request.purpose in MAX_PURPOSES.values()  # shared by the station's EVSEs
    step_s = int(request.interval.total_seconds())
    periods: list[dict[str, Any]] = []
    last: float | None = None
    last_body: dict[str, Any] | None = None
    # Python floats: numpy scalars make the rounding below several times slower
    for position, power in enumerate(request.power_kw.to_numpy(dtype=float).tolist()):
        if power == last:
            continue  # the same power makes the same period: extend it (NaN != NaN)
        last = power
        if not math.isfinite(power):
            raise ProfileError(f"power_kw: not a number at interval {position}")
        body: dict[str, Any] = {}  # the period but its start
        if power < -TOLERANCE_KW:
            if station_cap:
                raise ProfileError(f"power_kw: a station cap cannot be negative "
                                   f"({power:.3f} kW at interval {position})")
            if version is not OcppVersion.V21 or not evse.can_discharge:
                raise ProfileError(f"power_kw: EVSE {evse.evse_id!r} cannot discharge (OCPP "
                                   f"{version.value}, v2g_capable={evse.v2g_capable}), but "
                                   f"the plan discharges {-power:.3f} kW at interval {position}")
            magnitude = to_rate(evse, -power, unit)
            body.update(operationMode="CentralSetpoint", setpoint=-magnitude,
                        dischargeLimit=-magnitude, limit=0.0)
        else:
            body["limit"] = to_rate(evse, max(power, 0.0), unit, minimum=not station_cap)
            if version is OcppVersion.V21 and evse.can_discharge and not station_cap:
                body["operationMode"] = "ChargingOnly"
        if unit == "A":
            body["numberPhases"] = evse.phases
        if body == last_body:
            continue  # same as the period before: extend it
        last_body = body
        periods.append({"startPeriod": position * step_s, **body})
    return periods


def set_charging_profile(request: ProfileRequest) -> dict[str, Any]:
    """The SetChargingProfile request payload for the EVSE's OCPP version."""
    index = request.power_kw.index
    if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC" or len(index) == 0:
        raise ProfileError("power_kw: needs a non-empty UTC DatetimeIndex")
    if request.interval <= timedelta(0) or request.interval.total_seconds() % 1:
        raise ProfileError("interval: must be a positive whole number of seconds")
    if request.stack_level < 0 or request.profile_id < 1:
        raise ProfileError("stack_level: must be >= 0 and profile_id >= 1")
    if request.purpose == "TxProfile" and request.transaction_id is None:
        raise ProfileError("transaction_id: a TxProfile needs the running transaction")
    version = request.evse.ocpp_version
    if request.purpose in MAX_PURPOSES.values():
        if request.purpose != MAX_PURPOSES[version]:
            raise ProfileError(f"purpose: OCPP {version.value} calls the station cap "
                               f"{MAX_PURPOSES[version]}")
        if request.evse_number != 0 or request.transaction_id is not None:
            raise ProfileError("evse_number: a station cap goes to EVSE/connector 0, "
                               "without a transaction")
    start = require_utc(index[0].to_pydatetime(), "power_kw")
    duration_s = int(len(index) * request.interval.total_seconds())
    valid_to = start + timedelta(seconds=duration_s)
    periods = _periods(request)
    if version is OcppVersion.V16:
        schedule16: dict[str, Any] = {
            "duration": duration_s, "startSchedule": _utc(start),
            "chargingRateUnit": request.rate_unit, "chargingSchedulePeriod": periods}
        profile16: dict[str, Any] = {
            "chargingProfileId": request.profile_id, "stackLevel": request.stack_level,
            "chargingProfilePurpose": request.purpose, "chargingProfileKind": "Absolute",
            "validFrom": _utc(start), "validTo": _utc(valid_to),
            "chargingSchedule": schedule16}
        if request.transaction_id is not None:
            if not request.transaction_id.isdigit():
                raise ProfileError("transaction_id: OCPP 1.6 transaction ids are integers")
            profile16["transactionId"] = int(request.transaction_id)
        return {"connectorId": request.evse_number, "csChargingProfiles": profile16}
    schedule: dict[str, Any] = {
        "id": request.profile_id, "startSchedule": _utc(start), "duration": duration_s,
        "chargingRateUnit": request.rate_unit, "chargingSchedulePeriod": periods}
    profile: dict[str, Any] = {
        "id": request.profile_id, "stackLevel": request.stack_level,
        "chargingProfilePurpose": request.purpose, "chargingProfileKind": "Absolute",
        "validFrom": _utc(start), "validTo": _utc(valid_to), "chargingSchedule": [schedule]}
    if request.transaction_id is not None:
        profile["transactionId"] = request.transaction_id
    return {"evseId": request.evse_number, "chargingProfile": profile}


def _power_kw(evse: Evse, period: dict[str, Any], unit: RateUnit, *, snake: bool) -> float:
    """The signed power one period allows: minus the setpoint when discharging."""
    mode = period.get("operation_mode" if snake else "operationMode")
    if mode == "CentralSetpoint" and "setpoint" in period:
        return from_rate(evse, float(period["setpoint"]), unit)
    return from_rate(evse, float(period["limit"]), unit)


def _spread(periods: list[dict[str, Any]], start_key: str, power: Any,
            interval: timedelta, n_intervals: int) -> list[float]:
    """Per interval, ``power(period)`` of the last period started by then (inf before any)."""
    ordered = sorted(periods, key=lambda period: float(period[start_key]))
    step_s = interval.total_seconds()
    out: list[float] = []
    for i in range(n_intervals):
        started = [period for period in ordered if float(period[start_key]) <= i * step_s]
        out.append(float(power(started[-1])) if started else float("inf"))
    return out


def sent_power_kw(evse: Evse, payload: dict[str, Any], unit: RateUnit,
                  interval: timedelta, n_intervals: int) -> list[float]:
    """Per interval, the signed power a payload built here allows."""
    if "csChargingProfiles" in payload:
        periods = payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    else:
        periods = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
    return _spread(periods, "startPeriod",
                   lambda period: _power_kw(evse, period, unit, snake=False),
                   interval, n_intervals)


READBACK_GRACE = timedelta(seconds=2)
ZERO = timedelta(0)


def readback_excess(evse: Evse, payload: dict[str, Any], composite: dict[str, Any],
                    unit: RateUnit, plan_start: datetime, plan_end: datetime,
                    tolerance_kw: float) -> list[datetime]:
    """Moments where a station's composite schedule (read-back) allows more than it was
    sent: more charging, or more discharging.  Both are compared on absolute time: the
    composite starts when the station computed it, the payload at ``plan_start``; only
    ``[plan_start, plan_end)`` is checked.  ``composite`` is the ocpp library's snake-case
    GetCompositeSchedule answer (1.6 under ``charging_schedule``, 2.x under ``schedule``)."""
    if "csChargingProfiles" in payload:
        sent_periods = payload["csChargingProfiles"]["chargingSchedule"][
            "chargingSchedulePeriod"]
    else:
        sent_periods = payload["chargingProfile"]["chargingSchedule"][0][
            "chargingSchedulePeriod"]
    schedule = composite.get("charging_schedule") or composite.get("schedule") or {}
    raw_start = schedule.get("start_schedule") or schedule.get("schedule_start") or \
        composite.get("schedule_start")
    composite_start = plan_start if raw_start is None else parse_utc(raw_start,
                                                                     "schedule_start")
    sent = _timed(sent_periods, "startPeriod", plan_start,
                  lambda period: _power_kw(evse, period, unit, snake=False))
    applied = _timed(schedule.get("charging_schedule_period") or [], "start_period",
                     composite_start, lambda period: _power_kw(evse, period, unit, snake=True))
    begin = max(plan_start, composite_start)
    last = plan_end - READBACK_GRACE  # what a station does after the plan is its own
    changes = {begin, *(t for t, _ in sent + applied)}
    # each change is looked at on it and just after it (past the rounding grace)
    moments = sorted(t for c in changes for t in (c, c + 2 * READBACK_GRACE)
                     if begin <= t < last)
    excess: list[datetime] = []
    for moment in moments:
        used = _at(applied, moment)
        # stations round period offsets to whole seconds: a change of plan within
        # READBACK_GRACE of the moment may be either side of it
        allowed = [v for v in (_at(sent, moment + d) for d in (-READBACK_GRACE, ZERO,
                                                             READBACK_GRACE)) if v is not None]
        if used is None or not allowed:
            continue
        beyond = used > max(*allowed, 0.0) + tolerance_kw or \
            used < min(*allowed, 0.0) - tolerance_kw
        if beyond and (not excess or moment - excess[-1] > 2 * READBACK_GRACE):
            excess.append(moment)  # one per change is enough to say where
    return excess


def _timed(periods: list[dict[str, Any]], start_key: str, origin: datetime,
           power: Any) -> list[tuple[datetime, float]]:
    return sorted((origin + timedelta(seconds=float(p[start_key])), float(power(p)))
                  for p in periods)


def _at(steps: list[tuple[datetime, float]], moment: datetime) -> float | None:
    """The value of the last step started by ``moment`` (None before the first)."""
    found = None
    for start, value in steps:
        if start > moment:
            break
        found = value
    return found
