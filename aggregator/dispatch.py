"""Send a ``Schedule`` to the stations as OCPP profiles, check they follow, fall back if not.

Per EVSE: a TxProfile for the running transaction (TxDefaultProfile when there is none),
one stable profile id and stack level per EVSE and purpose (a new plan replaces the old
one); a timeout is retried once.  After an accepted profile the station's composite
schedule is read back: a station that accepts but plans more than it was sent is
reported as not following.  A refused plan is retried in the other rate unit, then
replaced by a zero-power profile, the one fallback that can never break a grid limit.

Given the plan in force before (``previous``), the EVSEs whose power goes down now are
sent first and the others only once every decrease has been answered: stations apply
profiles one by one, and sending an increase alongside a decrease could let a node's
load pass its cap for the time between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adapters.ocpp.csms import Csms
from adapters.ocpp.profiles import (
    ProfileError,
    ProfileRequest,
    RateUnit,
    readback_excess,
    set_charging_profile,
)
from aggregator.model import Evse, Schedule

STACK_LEVEL = 1
FOLLOW_TOLERANCE_KW = 0.05


@dataclass(frozen=True)
class Delivery:
    """What happened to one EVSE's profile."""

    evse_id: str
    station_id: str | None
    status: str  # the station's answer to the plan, or NotConnected / NotMapped / Invalid
    follows: bool  # accepted and (when checked) the read-back stays within the plan
    fallback: str | None = None  # "other-unit" or "zero" when the plan itself was refused
    detail: str = ""


def profile_id(station_id: str, evse_number: int, purpose: str) -> int:
    """A stable id per station, EVSE and purpose, so a new plan replaces the last one."""
    return evse_number * 10 + (1 if purpose == "TxProfile" else 2)


async def dispatch(csms: Csms, schedule: Schedule, evses: Mapping[str, Evse], *,
                   verify: bool = True,
                   station_caps_kw: Mapping[str, pd.Series] | None = None,
                   previous: Schedule | None = None) -> list[Delivery]:
    """Push every EVSE's planned power to its station (concurrently) and report.

    ``station_caps_kw`` adds a station-wide cap (ChargePointMaxProfile /
    ChargingStationMaxProfile) per station id: a safety net a station enforces even if
    a per-EVSE profile is overridden locally; its Delivery has the station id as evse_id.
    ``previous`` is the plan the stations follow now: decreases against it go out first.
    """
    where: dict[str, tuple[str, int]] = {
        evse_id: (station.station_id, number)
        for station in csms.config.stations for number, evse_id in station.evses.items()}
    units = {station.station_id: station.rate_unit for station in csms.config.stations}
    first = decreases(schedule, previous)
    gate = _Gate(len(first))
    jobs = [_deliver(csms, schedule, evses[evse_id], where.get(evse_id),
                     units.get(where[evse_id][0], "A") if evse_id in where else "A", verify,
                     gate, evse_id in first)
            for evse_id in schedule.power_kw.columns]
    for station_id, cap in (station_caps_kw or {}).items():
        jobs.append(_deliver_cap(csms, schedule, station_id, cap, evses, where,
                                 units.get(station_id, "A")))
    return list(await asyncio.gather(*jobs))


def decreases(schedule: Schedule, previous: Schedule | None) -> set[str]:
    """The EVSEs whose import and export are nowhere above the previous plan's.

    Compared on every interval both plans cover, not only the first: a station whose
    profile reaches the next period before another's does must not meet an increase
    there either.  Without a previous plan every EVSE counts as a decrease (one
    concurrent round); an EVSE the previous plan did not cover waits.
    """
    new = schedule.power_kw
    if previous is None or new.empty:
        return set(new.columns)
    rows = previous.power_kw.index
    position = rows.searchsorted(new.index, side="right") - 1
    step_ns = int(previous.interval.total_seconds() * 1e9)
    ends_ns = pd.DatetimeIndex(rows).as_unit("ns").asi8[position.clip(0)] + step_ns
    covered = (position >= 0) & (pd.DatetimeIndex(new.index).as_unit("ns").asi8 < ends_ns)
    if not covered.any():
        return set()  # the previous plan has ended: what the stations do is not known
    before = previous.power_kw.iloc[position[covered]].to_numpy()
    now = new[covered]
    old_columns = {column: k for k, column in enumerate(previous.power_kw.columns)}
    found = set()
    for evse_id in new.columns:
        if evse_id not in old_columns:
            continue
        was, will = before[:, old_columns[evse_id]], now[evse_id].to_numpy()
        if (np.maximum(will, 0.0) <= np.maximum(was, 0.0) + FOLLOW_TOLERANCE_KW).all() and \
                (np.maximum(-will, 0.0) <= np.maximum(-was, 0.0) + FOLLOW_TOLERANCE_KW).all():
            found.add(evse_id)
    return found


class _Gate:
    """Opens once every decrease has been answered, so that no increase goes out before."""

    def __init__(self, pending: int) -> None:
        self._pending = pending
        self._open = asyncio.Event()
        if pending <= 0:
            self._open.set()

    def passed(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


async def _deliver_cap(csms: Csms, schedule: Schedule, station_id: str, cap: pd.Series,
                       evses: Mapping[str, Evse], where: Mapping[str, tuple[str, int]],
                       unit: RateUnit) -> Delivery:
    """A station-wide cap, encoded with the OCPP version of the station's EVSEs."""
    mine = [evses[e] for e, (s, _) in where.items() if s == station_id and e in evses]
    if not mine:
        return Delivery(station_id, station_id, "NotMapped", False,
                        detail="no known EVSE at this station")
    if station_id not in csms.connected:
        return Delivery(station_id, station_id, "NotConnected", False)
    version = mine[0].ocpp_version
    purpose = "ChargePointMaxProfile" if version.value == "1.6" else \
        "ChargingStationMaxProfile"
    try:
        payload = set_charging_profile(ProfileRequest(
            evse=mine[0], power_kw=cap, interval=schedule.interval,
            profile_id=profile_id(station_id, 0, purpose), stack_level=STACK_LEVEL,
            evse_number=0, purpose=purpose))  # type: ignore[arg-type]
    except ProfileError as err:
        return Delivery(station_id, station_id, "Invalid", False, detail=str(err))
    status = await csms.set_charging_profile(station_id, payload)
    return Delivery(station_id, station_id, status, status == "Accepted")


async def _deliver(csms: Csms, schedule: Schedule, evse: Evse,
                   location: tuple[str, int] | None, unit: RateUnit,
                   verify: bool, gate: _Gate, decrease: bool) -> Delivery:
    if not decrease:
        await gate.wait()
    try:
        sent = await _send(csms, schedule, evse, location, unit)
    finally:
        if decrease:
            gate.passed()
    if isinstance(sent, Delivery):
        return sent
    station_id, number, payload = sent
    if not verify:
        return Delivery(evse.evse_id, station_id, "Accepted", True)
    follows, detail = await _read_back(csms, station_id, number, evse, payload, unit, schedule)
    return Delivery(evse.evse_id, station_id, "Accepted", follows, detail=detail)


async def _send(csms: Csms, schedule: Schedule, evse: Evse, location: tuple[str, int] | None,
                unit: RateUnit) -> Delivery | tuple[str, int, dict[str, object]]:
    """The plan's profile, retried or replaced when refused; what was accepted, if it was."""
    if location is None:
        return Delivery(evse.evse_id, None, "NotMapped", False,
                        detail="no station lists this EVSE")
    station_id, number = location
    if station_id not in csms.connected:
        return Delivery(evse.evse_id, station_id, "NotConnected", False)
    transaction = csms.transactions.get((station_id, number))
    purpose = "TxProfile" if transaction is not None else "TxDefaultProfile"
    planned = schedule.power_kw[evse.evse_id]

    def request(power: pd.Series, rate: RateUnit) -> ProfileRequest:
        return ProfileRequest(evse=evse, power_kw=power, interval=schedule.interval,
                              profile_id=profile_id(station_id, number, purpose),
                              stack_level=STACK_LEVEL, evse_number=number,
                              purpose=purpose,  # type: ignore[arg-type]
                              transaction_id=transaction, rate_unit=rate)

    try:
        payload = set_charging_profile(request(planned, unit))
    except ProfileError as err:
        return Delivery(evse.evse_id, station_id, "Invalid", False, detail=str(err))
    status = await csms.set_charging_profile(station_id, payload)
    if status == "Timeout":  # one more try before treating the plan as refused
        status = await csms.set_charging_profile(station_id, payload)
    if status == "Accepted":
        return station_id, number, payload
    other: RateUnit = "W" if unit == "A" else "A"
    retry = await csms.set_charging_profile(station_id,
                                            set_charging_profile(request(planned, other)))
    if retry == "Accepted":
        return Delivery(evse.evse_id, station_id, status, False, fallback="other-unit",
                        detail=f"plan refused in {unit}, accepted in {other}")
    zero = set_charging_profile(request(planned * 0.0, unit))
    last = await csms.set_charging_profile(station_id, zero)
    return Delivery(evse.evse_id, station_id, status, False, fallback="zero",
                    detail=f"plan refused ({status}, {retry}); zero profile: {last}")


async def _read_back(csms: Csms, station_id: str, number: int, evse: Evse,
                     payload: dict[str, object], unit: RateUnit,
                     schedule: Schedule) -> tuple[bool, str]:
    n = len(schedule.power_kw)
    duration_s = int(n * schedule.interval.total_seconds())
    composite = await csms.get_composite_schedule(station_id, number, duration_s, unit)
    if composite is None:
        return False, "no composite schedule read back"
    start = schedule.intervals[0].to_pydatetime()
    over = readback_excess(evse, payload, composite, unit, start,
                           start + n * schedule.interval, FOLLOW_TOLERANCE_KW)
    if over:
        shown = ", ".join(f"{moment:%H:%M:%S}" for moment in over[:6])
        return False, f"station plans beyond what it was sent from {shown}"
    return True, ""
