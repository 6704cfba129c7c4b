"""Simulated OCPP charge points (1.6, 2.0.1, 2.1) for the live demo and end-to-end tests.

Each ``SimStation`` is a real OCPP-J client (the ``ocpp`` library over ``websockets``,
security profile 1) that behaves like a station with smart charging: it keeps the
profiles it is sent by purpose and stack level, applies them to simulated EVs, meters
what flows (import and export registers, never netted) and answers GetCompositeSchedule
with what it will really do.  Time comes from an injectable ``clock`` so tests advance it
deterministically; energy is integrated piecewise between profile changes and stops
when a battery is full (charging) or at its floor (discharging).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from adapters.ocpp import compat
from aggregator.model import parse_utc, require_utc

compat.install()  # our 2.1 composite schedules go out through the same key conversion

Version = Literal["1.6", "2.0.1", "2.1"]
Clock = Callable[[], datetime]
SUBPROTOCOLS: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
STATION_MAX = {"ChargePointMaxProfile", "ChargingStationMaxProfile"}
_EPS = 1e-9
_TICK = timedelta(microseconds=1)
_RECURRENCE_S = {"Daily": 86_400.0, "Weekly": 604_800.0}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """RFC 3339 UTC with ``Z`` (milliseconds only when there are any)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}Z" if moment.microsecond else f"{text}Z"


def _wh(register_wh: float) -> int:
    """A register as whole Wh, floored (monotonic) after float noise is rounded away."""
    return math.floor(round(register_wh, 6))


def _down(value: float) -> float:
    """Magnitude rounded down to 0.1 (as OCPP rates allow); exact decimals stay exact."""
    magnitude = math.floor(round(abs(value) * 10.0, 6)) / 10.0
    return (-magnitude if value < 0 else magnitude) + 0.0


@dataclass(frozen=True)
class SimEv:
    """A simulated EV as it arrives: battery, state of charge (0..1), wishes and limits."""

    battery_capacity_kwh: float
    soc: float
    departure: datetime
    max_charge_kw: float
    energy_requested_kwh: float | None = None  # None: fill the battery
    max_discharge_kw: float = 0.0  # 0 for an EV without V2G
    min_soc: float = 0.0  # discharge never goes below this

    def __post_init__(self) -> None:
        object.__setattr__(self, "departure", require_utc(self.departure, "departure"))
        if self.battery_capacity_kwh <= 0 or min(self.max_charge_kw, self.max_discharge_kw) < 0:
            raise ValueError("battery_capacity_kwh must be > 0 and power limits >= 0")
        if not (0.0 <= self.min_soc <= 1.0 and 0.0 <= self.soc <= 1.0):
            raise ValueError("soc and min_soc must be within 0..1")

    @property
    def requested_kwh(self) -> float:
        """The energy the EV asks for (at most what fits into the battery)."""
        room = self.battery_capacity_kwh * (1.0 - self.soc)
        return room if self.energy_requested_kwh is None else min(room,
                                                                   self.energy_requested_kwh)


@dataclass(frozen=True)
class SimEvse:
    """One EVSE (connector 1 of it) with its ratings; export needs a V2G EVSE on 2.1."""

    max_import_kw: float
    max_export_kw: float = 0.0
    phases: int = 3
    voltage_v: float = 230.0


@dataclass
class EvseState:
    """What one EVSE is doing now; the station keeps it up to date (read it, don't write)."""

    evse: SimEvse
    ev: SimEv | None = None
    soc: float | None = None
    transaction_id: str | None = None
    started_at: datetime | None = None
    applied_kw: float = 0.0  # + charging, - discharging
    import_register_wh: float = 0.0  # monotonic, exact (reported floored to whole Wh)
    export_register_wh: float = 0.0
    history: list[tuple[datetime, float]] = field(default_factory=list)  # (from, applied_kw)
    seq_no: int = 0  # 2.x TransactionEvent sequence

    @property
    def imported_kwh(self) -> float:
        return self.import_register_wh / 1000.0

    @property
    def exported_kwh(self) -> float:
        return self.export_register_wh / 1000.0


@dataclass(frozen=True)
class _Profile:
    """An installed charging profile, version-neutral (snake_case periods, floats)."""

    profile_id: int
    evse_number: int
    purpose: str  # TxProfile, TxDefaultProfile, or StationMax
    stack_level: int
    kind: str
    recurrency: str | None
    valid_from: datetime | None
    valid_to: datetime | None
    transaction_id: str | None
    start: datetime | None
    duration_s: float | None
    rate_unit: str
    periods: tuple[dict[str, Any], ...]
    received_at: datetime


@dataclass(frozen=True)
class _Limit:
    """What one schedule period allows, in kW."""

    import_kw: float = math.inf
    setpoint_kw: float | None = None  # 2.1 CentralSetpoint; negative: discharge
    discharge_kw: float = math.inf  # magnitude cap on discharge (2.1 dischargeLimit)
    mode: str | None = None  # 2.1 operationMode as sent


def charging_needs(ev: SimEv, evse: SimEvse, version: Version) -> dict[str, Any]:
    """What ``ev`` at ``evse`` says in NotifyEVChargingNeeds (snake_case ``charging_needs``,
    as ``csms.ev_needs`` reads it): V2X parameters on 2.1 V2G, AC parameters otherwise."""
    needs: dict[str, Any] = {"departure_time": _iso(ev.departure)}
    if version == "2.1" and ev.max_discharge_kw > 0 and evse.max_export_kw > 0:
        target_soc = min(1.0, ev.soc + ev.requested_kwh / ev.battery_capacity_kwh)
        needs.update(requested_energy_transfer="AC_BPT", v2x_charging_parameters={
            "max_charge_power": ev.max_charge_kw * 1000.0,
            "max_discharge_power": ev.max_discharge_kw * 1000.0,
            "ev_target_energy_request": round(ev.requested_kwh * 1000.0, 1),
            # ISO 15118-20: relative to the present SoC; negative when above the V2X range's
            # bottom.  This EV stops at its request: that is also the most it takes.
            "ev_min_v2x_energy_request": round(
                (ev.min_soc - ev.soc) * ev.battery_capacity_kwh * 1000.0, 1),
            "ev_max_energy_request": round(ev.requested_kwh * 1000.0, 1),
            "target_soc": round(target_soc * 100.0)})
    else:
        needs.update(
            requested_energy_transfer="AC_three_phase" if evse.phases == 3
            else "AC_single_phase",
            ac_charging_parameters={  # integers: 2.0.1's schema says so
                "energy_amount": round(ev.requested_kwh * 1000.0), "ev_min_current": 6,
                "ev_max_current": math.floor(ev.max_charge_kw * 1000.0
                                             / (evse.phases * evse.voltage_v)),
                "ev_max_voltage": round(evse.voltage_v)})
    return needs


class SimStation:
    """A simulated charging station speaking OCPP ``version`` to a CSMS.

    ``follows=False`` makes a station that accepts profiles but ignores them (it charges
    uncontrolled and says so in its composite schedule), so tests can see it flagged.
    """

    def __init__(self, station_id: str, version: Version, password: str,
                 evses: dict[int, SimEvse], clock: Clock = _utc_now, *, follows: bool = True,
                 response_timeout_s: float = 10.0,
                 on_accept: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        if version not in SUBPROTOCOLS:
            raise ValueError(f"version: one of {sorted(SUBPROTOCOLS)}, got {version!r}")
        if not evses or min(evses) < 1:
            raise ValueError("evses: numbered from 1")
        self.station_id = station_id
        self.version = version
        self.password = password
        self.evses = dict(evses)
        self.clock = clock
        self.follows = follows
        self.response_timeout_s = response_timeout_s
        self.on_accept = on_accept  # called with (EVSE number, profile) on each accepted one
        self.state = {number: EvseState(evse) for number, evse in self.evses.items()}
        self.received: dict[int, list[dict[str, Any]]] = {}  # accepted, by EVSE (0: station)
        self._profiles: list[_Profile] = []
        self._at: datetime | None = None
        self._link: Any = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    # -- connection ------------------------------------------------------------------------
    async def connect(self, url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """Open ``url/<station_id>`` with basic auth, boot, and report every EVSE."""
        token = base64.b64encode(f"{self.station_id}:{self.password}".encode()).decode()
        self._ws = await connect(f"{url.rstrip('/')}/{self.station_id}",
                                 subprotocols=[Subprotocol(SUBPROTOCOLS[self.version])],
                                 additional_headers={"Authorization": f"Basic {token}"},
                                 ssl=ssl_context)
        link_class = {"1.6": _Link16, "2.0.1": _Link201, "2.1": _Link21}[self.version]
        self._link = link_class(self)
        self._task = asyncio.create_task(self._link.start())
        if self.version == "1.6":
            boot = await self._call(call16.BootNotification(
                charge_point_model="SimStation", charge_point_vendor="gridflex"))
        else:
            boot = await self._call(self._module().BootNotification(
                charging_station={"model": "SimStation", "vendor_name": "gridflex"},
                reason="PowerUp"))
        if boot.status != "Accepted":
            await self.close()
            raise ConnectionRefusedError(f"{self.station_id}: boot {boot.status}")
        now = self._now()
        self._advance(now)
        for number in self.evses:
            await self._status(number, "Available")

    async def close(self) -> None:
        """Stop listening and close the WebSocket."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    # -- what the EVs do -------------------------------------------------------------------
    async def plug_in(self, evse_number: int, ev: SimEv, id_token: str) -> str:
        """Plug ``ev`` in, authorise and start a transaction (and tell the EV's needs on
        2.x); return the transaction id.  A refused token raises ``PermissionError``."""
        state = self.state[evse_number]
        if state.ev is not None:
            raise ValueError(f"evse {evse_number}: already occupied")
        now = self._now()
        self._advance(now)
        state.ev, state.soc, state.started_at = ev, ev.soc, now
        if self.version == "1.6":
            await self._plug_in16(evse_number, state, id_token, now)
        else:
            await self._plug_in2x(evse_number, state, id_token, now)
        self._advance(self._now())
        assert state.transaction_id is not None
        return state.transaction_id

    async def _plug_in16(self, number: int, state: EvseState, id_tag: str,
                         now: datetime) -> None:
        await self._status(number, "Preparing")
        authorized = await self._call(call16.Authorize(id_tag=id_tag))
        if authorized.id_tag_info["status"] != "Accepted":
            self._unplugged(number)
            await self._status(number, "Available")
            raise PermissionError(f"id tag {id_tag!r}: {authorized.id_tag_info['status']}")
        started = await self._call(call16.StartTransaction(
            connector_id=number, id_tag=id_tag, meter_start=_wh(state.import_register_wh),
            timestamp=_iso(now)))
        if started.id_tag_info["status"] != "Accepted":
            self._unplugged(number)
            await self._status(number, "Available")
            raise PermissionError(f"id tag {id_tag!r}: {started.id_tag_info['status']}")
        state.transaction_id = str(started.transaction_id)
        await self._status(number, "Charging")
        # the export register and SoC at the start (StartTransaction carries only import)
        await self._call(call16.MeterValues(
            connector_id=number, transaction_id=started.transaction_id,
            meter_value=[self._meter_value(state, now, "Transaction.Begin", energy_import=False,
                                           power=False)]))

    async def _plug_in2x(self, number: int, state: EvseState, id_token: str,
                         now: datetime) -> None:
        module = self._module()
        await self._status(number, "Occupied")
        state.transaction_id, state.seq_no = str(uuid.uuid4()), 0
        reply = await self._call(module.TransactionEvent(
            event_type="Started", timestamp=_iso(now), trigger_reason="Authorized",
            seq_no=self._seq(state), evse={"id": number, "connector_id": 1},
            transaction_info={"transaction_id": state.transaction_id,
                              "charging_state": "EVConnected"},
            id_token={"id_token": id_token, "type": "ISO14443"},
            meter_value=[self._meter_value(state, now, "Transaction.Begin", power=False)]))
        status = (reply.id_token_info or {}).get("status", "Accepted")
        if status != "Accepted":
            await self._call(module.TransactionEvent(
                event_type="Ended", timestamp=_iso(now), trigger_reason="Deauthorized",
                seq_no=self._seq(state), evse={"id": number, "connector_id": 1},
                transaction_info={"transaction_id": state.transaction_id,
                                  "stopped_reason": "DeAuthorized"}))
            self._unplugged(number)
            await self._status(number, "Available")
            raise PermissionError(f"id token {id_token!r}: {status}")
        await self._call(module.NotifyEVChargingNeeds(
            evse_id=number, charging_needs=self._needs(state)))

    def _needs(self, state: EvseState) -> dict[str, Any]:
        """NotifyEVChargingNeeds ``charging_needs`` (snake_case) as csms.ev_needs reads it."""
        assert state.ev is not None
        return charging_needs(state.ev, state.evse, self.version)

    async def step(self) -> None:
        """Integrate energy up to ``clock()`` and report every running transaction's
        registers, power and SoC (MeterValues on 1.6, TransactionEvent Updated on 2.x)."""
        now = self._now()
        self._advance(now)
        for number, state in self.state.items():
            if state.transaction_id is None:
                continue
            sample = self._meter_value(state, now, "Sample.Periodic")
            if self.version == "1.6":
                await self._call(call16.MeterValues(
                    connector_id=number, transaction_id=int(state.transaction_id),
                    meter_value=[sample]))
                continue
            await self._call(self._module().TransactionEvent(
                event_type="Updated", timestamp=_iso(now), trigger_reason="MeterValuePeriodic",
                seq_no=self._seq(state), evse={"id": number, "connector_id": 1},
                transaction_info={"transaction_id": state.transaction_id,
                                  "charging_state": self._charging_state(state)},
                meter_value=[sample]))

    async def unplug(self, evse_number: int) -> None:
        """End the transaction with the final registers (StopTransaction / Ended)."""
        state = self.state[evse_number]
        if state.transaction_id is None:
            raise ValueError(f"evse {evse_number}: no transaction")
        now = self._now()
        self._advance(now)
        final = self._meter_value(state, now, "Transaction.End", power=False)
        if self.version == "1.6":
            export_and_soc = {**final, "sampled_value": [
                s for s in final["sampled_value"]
                if s.get("measurand") != "Energy.Active.Import.Register"]}
            await self._call(call16.StopTransaction(
                meter_stop=_wh(state.import_register_wh), timestamp=_iso(now),
                transaction_id=int(state.transaction_id), reason="EVDisconnected",
                transaction_data=[export_and_soc]))
            await self._status(evse_number, "Finishing")
        else:
            await self._call(self._module().TransactionEvent(
                event_type="Ended", timestamp=_iso(now), trigger_reason="EVDeparted",
                seq_no=self._seq(state), evse={"id": evse_number, "connector_id": 1},
                transaction_info={"transaction_id": state.transaction_id,
                                  "charging_state": "Idle", "stopped_reason": "EVDisconnected"},
                meter_value=[final]))
        self._unplugged(evse_number)
        self._advance(now)
        await self._status(evse_number, "Available")

    def _unplugged(self, number: int) -> None:
        """Forget the EV and its transaction; its TxProfiles go with it."""
        state = self.state[number]
        state.ev = state.soc = state.transaction_id = state.started_at = None
        self._profiles = [p for p in self._profiles
                          if not (p.purpose == "TxProfile" and p.evse_number == number)]
        self._record(self._at or self._now(), self._powers(self._at or self._now()))

    # -- energy ------------------------------------------------------------------------------
    def _advance(self, until: datetime) -> None:
        """Integrate every EVSE from the last instant to ``until`` (piecewise constant power
        between profile changes; a battery that fills or hits its floor stops there)."""
        at = self._at
        if at is None or until <= at:  # first call, or a clock that did not move on
            self._at = until if at is None else at
            self._record(self._at, self._powers(self._at))
            return
        while at < until:
            powers = self._powers(at)
            self._record(at, powers)
            nxt = min([until, *[t for t in self._changes(at, until) if t > at]])
            for number, power_kw in powers.items():
                bound = self._hours_to_bound(self.state[number], power_kw)
                if bound is not None and at + timedelta(hours=bound) < nxt:
                    nxt = max(at + timedelta(hours=bound), at + _TICK)
            hours = (nxt - at).total_seconds() / 3600.0
            for number, power_kw in powers.items():
                self._integrate(self.state[number], power_kw, hours)
            at = nxt
        self._at = until
        self._record(until, self._powers(until))

    @staticmethod
    def _hours_to_bound(state: EvseState, power_kw: float) -> float | None:
        ev, soc = state.ev, state.soc
        if ev is None or soc is None or abs(power_kw) < _EPS:
            return None
        room_kwh = (1.0 - soc if power_kw > 0 else soc - ev.min_soc) * ev.battery_capacity_kwh
        return max(room_kwh, 0.0) / abs(power_kw)

    @staticmethod
    def _integrate(state: EvseState, power_kw: float, hours: float) -> None:
        ev, soc = state.ev, state.soc
        if ev is None or soc is None or abs(power_kw) < _EPS:
            return
        if power_kw > 0:
            energy_kwh = min(power_kw * hours, (1.0 - soc) * ev.battery_capacity_kwh)
            state.import_register_wh += max(energy_kwh, 0.0) * 1000.0
        else:
            energy_kwh = -min(-power_kw * hours, (soc - ev.min_soc) * ev.battery_capacity_kwh)
            state.export_register_wh += max(-energy_kwh, 0.0) * 1000.0
        state.soc = min(1.0, max(ev.min_soc if power_kw < 0 else 0.0,
                                 soc + energy_kwh / ev.battery_capacity_kwh))

    def _record(self, at: datetime, powers: dict[int, float]) -> None:
        for number, power_kw in powers.items():
            state = self.state[number]
            state.applied_kw = power_kw
            if not state.history or state.history[-1][1] != power_kw:
                state.history.append((at, power_kw))

    def _powers(self, at: datetime) -> dict[int, float]:
        """Applied kW per EVSE at ``at``: the EV's, EVSE's and profile limits, then the
        station cap shared among the charging EVSEs (max-min fair)."""
        wanted = {number: self._wanted_kw(number, at) for number in self.evses}
        cap_kw = self._station_cap_kw(at) if self.follows else None
        if cap_kw is None:
            return wanted
        charging = sorted((power, number) for number, power in wanted.items() if power > 0)
        left_kw, count = cap_kw, len(charging)
        for power, number in charging:
            wanted[number] = min(power, max(left_kw, 0.0) / count)
            left_kw -= wanted[number]
            count -= 1
        return wanted

    def _wanted_kw(self, number: int, at: datetime) -> float:
        state = self.state[number]
        ev, soc, evse = state.ev, state.soc, state.evse
        if ev is None or soc is None:
            return 0.0
        charge_kw = min(ev.max_charge_kw, evse.max_import_kw) if soc < 1.0 - _EPS else 0.0
        discharge_kw = min(ev.max_discharge_kw, evse.max_export_kw) \
            if soc > ev.min_soc + _EPS else 0.0
        limit = self._control(number, at) if self.follows else None
        if limit is None:
            return charge_kw  # no profile: uncontrolled charging
        if limit.setpoint_kw is not None and limit.setpoint_kw < 0:
            return -min(-limit.setpoint_kw, limit.discharge_kw, discharge_kw)
        if limit.setpoint_kw is not None:
            return max(0.0, min(limit.setpoint_kw, limit.import_kw, charge_kw))
        return max(0.0, min(limit.import_kw, charge_kw))

    # -- profiles ----------------------------------------------------------------------------
    def installed_ids(self, evse_number: int | None = None) -> list[int]:
        """Ids of the profiles installed now (on one EVSE, 0 for station-wide)."""
        return sorted(p.profile_id for p in self._profiles
                      if evse_number is None or p.evse_number == evse_number)

    def _set_profile(self, number: int, raw: dict[str, Any]) -> str:
        """Install a (snake_case) profile for EVSE ``number``; Accepted or Rejected."""
        try:
            profile = self._parse_profile(number, raw)
        except (KeyError, TypeError, ValueError):
            return "Rejected"
        if profile is None:
            return "Rejected"
        now = self._now()
        self._advance(now)  # what flowed so far flowed under the old profiles
        self._profiles = [p for p in self._profiles if p.profile_id != profile.profile_id and (
            p.evse_number, p.purpose, p.stack_level) != (
                profile.evse_number, profile.purpose, profile.stack_level)]
        self._profiles.append(profile)
        self.received.setdefault(number, []).append(raw)
        self._record(now, self._powers(now))
        if self.on_accept is not None:
            self.on_accept(number, raw)
        return "Accepted"

    def _parse_profile(self, number: int, raw: dict[str, Any]) -> _Profile | None:
        schedule = raw["charging_schedule"]
        if isinstance(schedule, list):  # 2.x: one schedule (more only for ISO 15118 choice)
            schedule = schedule[0]
        purpose = str(raw["charging_profile_purpose"])
        kind = str(raw["charging_profile_kind"])
        if purpose in STATION_MAX:
            purpose = "StationMax"
        state = self.state.get(number)
        tx = raw.get("transaction_id")
        if purpose not in ("TxProfile", "TxDefaultProfile", "StationMax") or kind not in (
                "Absolute", "Relative", "Recurring") or (number != 0 and state is None):
            return None  # not a purpose or kind this station does, or no such EVSE
        if (purpose == "StationMax" and number != 0) or (purpose == "TxProfile" and number == 0):
            return None  # the station cap goes to EVSE 0, a TxProfile to a real EVSE
        if purpose == "TxProfile" and (
                state is None or state.transaction_id is None
                or (tx is None and self.version != "1.6")  # 2.x: a TxProfile names its tx
                or (tx is not None and str(tx) != state.transaction_id)):
            return None
        periods = tuple(sorted((dict(p) for p in schedule["charging_schedule_period"]),
                               key=lambda p: float(p["start_period"])))

        def when(key: str, source: dict[str, Any]) -> datetime | None:
            value = source.get(key)
            return parse_utc(value, key) if value is not None else None

        return _Profile(
            profile_id=int(raw["charging_profile_id"] if self.version == "1.6" else raw["id"]),
            evse_number=number, purpose=purpose, stack_level=int(raw["stack_level"]),
            kind=kind, recurrency=raw.get("recurrency_kind"),
            valid_from=when("valid_from", raw), valid_to=when("valid_to", raw),
            transaction_id=str(tx) if tx is not None else None,
            start=when("start_schedule", schedule),
            duration_s=float(schedule["duration"]) if schedule.get("duration") is not None
            else None, rate_unit=str(schedule["charging_rate_unit"]), periods=periods,
            received_at=self._now())

    def _clear(self, profile_id: int | None, number: int | None, purpose: str | None,
               stack_level: int | None) -> str:
        """ClearChargingProfile: by id, else by every criterion given; Accepted/Unknown."""
        if purpose in STATION_MAX:
            purpose = "StationMax"

        def matches(p: _Profile) -> bool:
            if profile_id is not None:
                return p.profile_id == profile_id
            return ((number is None or p.evse_number == number)
                    and (purpose is None or p.purpose == purpose)
                    and (stack_level is None or p.stack_level == stack_level))

        now = self._now()
        self._advance(now)
        kept = [p for p in self._profiles if not matches(p)]
        found = len(kept) < len(self._profiles)
        self._profiles = kept
        self._record(now, self._powers(now))
        return "Accepted" if found else "Unknown"

    def _offset_s(self, profile: _Profile, at: datetime) -> float | None:
        """Seconds into the profile's schedule at ``at``, or None when it is not in force."""
        if (profile.valid_from is not None and at < profile.valid_from) or (
                profile.valid_to is not None and at >= profile.valid_to):
            return None
        elapsed = (at - self._base(profile)).total_seconds()
        if profile.kind == "Recurring" and elapsed >= 0:
            elapsed %= _RECURRENCE_S.get(profile.recurrency or "Daily", 86_400.0)
        if elapsed < 0 or (profile.duration_s is not None and elapsed >= profile.duration_s):
            return None
        return elapsed

    def _base(self, profile: _Profile) -> datetime:
        """When the schedule starts: startSchedule, the transaction start (Relative), or
        when it was received."""
        state = self.state.get(profile.evse_number)
        if profile.kind == "Relative":
            started = state.started_at if state is not None else None
            return started or profile.received_at
        return profile.start or profile.valid_from or profile.received_at

    def _changes(self, after: datetime, until: datetime) -> Iterable[datetime]:
        """Every instant in (after, until] where some installed profile may change."""
        for profile in self._profiles:
            base = self._base(profile)
            edges = [profile.valid_from, profile.valid_to]
            offsets = [float(p["start_period"]) for p in profile.periods]
            if profile.duration_s is not None:
                offsets.append(profile.duration_s)
            repeat_s = _RECURRENCE_S.get(profile.recurrency or "Daily", 86_400.0) \
                if profile.kind == "Recurring" else None
            if repeat_s is None:
                edges += [base + timedelta(seconds=o) for o in offsets]
            else:
                first = math.floor((after - base).total_seconds() / repeat_s)
                last = math.floor((until - base).total_seconds() / repeat_s)
                edges += [base + timedelta(seconds=k * repeat_s + o)
                          for k in range(first, last + 1) for o in offsets]
            yield from (edge for edge in edges if edge is not None and after < edge <= until)

    def _in_force(self, purpose: str, numbers: tuple[int, ...], at: datetime,
                  state: EvseState | None = None) -> tuple[_Profile, dict[str, Any]] | None:
        """The profile of ``purpose`` that rules at ``at`` and its period: an EVSE's own
        before EVSE 0's, then the highest stack level."""
        for number in numbers:
            best: tuple[_Profile, dict[str, Any]] | None = None
            for profile in self._profiles:
                if profile.purpose != purpose or profile.evse_number != number:
                    continue
                if purpose == "TxProfile" and (state is None or state.transaction_id is None or (
                        profile.transaction_id not in (None, state.transaction_id))):
                    continue
                offset = self._offset_s(profile, at)
                if offset is None:
                    continue
                started = [p for p in profile.periods if float(p["start_period"]) <= offset]
                if started and (best is None or profile.stack_level > best[0].stack_level):
                    best = (profile, started[-1])
            if best is not None:
                return best
        return None

    def _control(self, number: int, at: datetime) -> _Limit | None:
        """The TxProfile (else TxDefaultProfile) limit on EVSE ``number`` at ``at``."""
        state = self.state[number]
        found = self._in_force("TxProfile", (number,), at, state) or self._in_force(
            "TxDefaultProfile", (number, 0), at)
        if found is None:
            return None
        profile, period = found
        return self._limit(profile, period, state.evse.phases, state.evse.voltage_v)

    def _station_cap_kw(self, at: datetime) -> float | None:
        found = self._in_force("StationMax", (0,), at)
        if found is None:
            return None
        profile, period = found
        voltage_v = max(evse.voltage_v for evse in self.evses.values())
        return self._limit(profile, period, 3, voltage_v).import_kw

    def _limit(self, profile: _Profile, period: dict[str, Any], phases: int,
               voltage_v: float) -> _Limit:
        """One period in kW (A: times phases in use and voltage; per-phase limits added)."""
        used = min(int(period.get("number_phases") or 3), phases)

        def kw(value: float, l2: Any = None, l3: Any = None) -> float:
            if profile.rate_unit == "W":
                return float(value) / 1000.0
            if l2 is not None or l3 is not None:  # 2.1 per-phase: the field is L1
                return (float(value) + float(l2 or 0) + float(l3 or 0)) * voltage_v / 1000.0
            return float(value) * used * voltage_v / 1000.0

        mode = period.get("operation_mode") if self.version == "2.1" else None
        if mode == "Idle":
            return _Limit(import_kw=0.0, mode=mode)
        limit = period.get("limit")
        import_kw = max(0.0, kw(limit, period.get("limit_l2"), period.get("limit_l3"))) \
            if limit is not None else math.inf
        setpoint = period.get("setpoint")
        if mode != "CentralSetpoint" or setpoint is None:
            return _Limit(import_kw=import_kw, mode=mode)
        discharge = period.get("discharge_limit")
        return _Limit(import_kw=import_kw, mode=mode,
                      setpoint_kw=kw(setpoint, period.get("setpoint_l2"),
                                     period.get("setpoint_l3")),
                      discharge_kw=abs(kw(discharge)) if discharge is not None else math.inf)

    def composite(self, evse_number: int, duration_s: int,
                  unit: str = "A") -> tuple[datetime, list[dict[str, Any]]]:
        """The schedule this station will apply on an EVSE (0: the whole station) from
        ``clock()`` for ``duration_s``: profiles, station cap and EVSE ratings combined
        (not the EV's state).  Periods are snake_case in ``unit``, rounded down."""
        start = self._now()
        end = start + timedelta(seconds=duration_s)
        moments = sorted({start, *(t for t in self._changes(start, end) if t < end)})
        periods: list[dict[str, Any]] = []
        for moment in moments:
            period = {"start_period": int((moment - start).total_seconds()),
                      **self._composite_period(evse_number, moment, unit)}
            if periods and periods[-1]["start_period"] == period["start_period"]:
                periods.pop()
            if periods and {k: v for k, v in periods[-1].items() if k != "start_period"} == {
                    k: v for k, v in period.items() if k != "start_period"}:
                continue
            periods.append(period)
        return start, periods

    def _composite_period(self, number: int, at: datetime, unit: str) -> dict[str, Any]:
        if number == 0:
            phases, voltage_v = 3, max(evse.voltage_v for evse in self.evses.values())
            limit_kw = sum(evse.max_import_kw for evse in self.evses.values())
            control = None
        else:
            evse = self.evses[number]
            phases, voltage_v, limit_kw = evse.phases, evse.voltage_v, evse.max_import_kw
            control = self._control(number, at) if self.follows else None
        cap_kw = self._station_cap_kw(at) if self.follows else None
        limit_kw = min(limit_kw, cap_kw if cap_kw is not None else math.inf,
                       control.import_kw if control is not None else math.inf)

        def rate(kw: float) -> float:
            return _down(kw * 1000.0 if unit == "W" else kw * 1000.0 / (phases * voltage_v))

        period: dict[str, Any] = {"limit": rate(limit_kw)}
        if unit == "A":
            period["number_phases"] = phases
        if self.version == "2.1" and control is not None and control.mode is not None:
            period["operation_mode"] = control.mode
        if self.version == "2.1" and control is not None and control.setpoint_kw is not None:
            if control.setpoint_kw < 0:
                export_kw = min(control.discharge_kw, self.evses[number].max_export_kw)
                period.update(setpoint=rate(-min(-control.setpoint_kw, export_kw)),
                              discharge_limit=rate(-export_kw))
            else:
                period["setpoint"] = rate(min(control.setpoint_kw, limit_kw))
        return period

    # -- messages ----------------------------------------------------------------------------
    def _meter_value(self, state: EvseState, at: datetime, context: str, *,
                     energy_import: bool = True, power: bool = True) -> dict[str, Any]:
        """One meter value (snake_case): registers in Wh, power in W, SoC in percent."""
        values: list[tuple[str, float, str]] = []
        if energy_import:
            values.append(("Energy.Active.Import.Register",
                           _wh(state.import_register_wh), "Wh"))
        values.append(("Energy.Active.Export.Register", _wh(state.export_register_wh),
                       "Wh"))
        if power:
            values += [("Power.Active.Import", round(max(state.applied_kw, 0.0) * 1000, 1), "W"),
                       ("Power.Active.Export", round(max(-state.applied_kw, 0.0) * 1000, 1),
                        "W")]
        if state.soc is not None:
            values.append(("SoC", round(state.soc * 100.0, 1), "Percent"))
        sampled = []
        for measurand, value, unit in values:
            if self.version == "1.6":
                item: dict[str, Any] = {"value": str(value), "unit": unit}
            else:
                item = {"value": value, "unit_of_measure": {"unit": unit}}
            item.update(measurand=measurand, context=context)
            if measurand == "SoC":
                item["location"] = "EV"
            sampled.append(item)
        return {"timestamp": _iso(at), "sampled_value": sampled}

    def _charging_state(self, state: EvseState) -> str:
        if abs(state.applied_kw) > _EPS:
            return "Charging"
        return "SuspendedEV" if state.soc is not None and state.soc >= 1.0 - _EPS \
            else "SuspendedEVSE"

    async def _status(self, number: int, status: str) -> None:
        if self.version == "1.6":
            await self._call(call16.StatusNotification(
                connector_id=number, error_code="NoError", status=status,
                timestamp=_iso(self._now())))
        else:
            await self._call(self._module().StatusNotification(
                timestamp=_iso(self._now()), connector_status=status, evse_id=number,
                connector_id=1))

    @staticmethod
    def _seq(state: EvseState) -> int:
        state.seq_no += 1
        return state.seq_no - 1

    def _module(self) -> Any:
        return call21 if self.version == "2.1" else call201

    async def _call(self, request: Any) -> Any:
        if self._link is None:
            raise ConnectionError(f"{self.station_id}: not connected")
        return await self._link.call(request, suppress=False)

    def _now(self) -> datetime:
        return require_utc(self.clock(), "clock()")


def _plain(data: Any) -> Any:
    """ocpp 2.1.0 hands 1.6 profile numbers over as Decimal: plain floats instead."""
    return json.loads(json.dumps(data, default=float))


class _Link16(ChargePoint16):  # type: ignore[misc]
    """The 1.6 wire side of a SimStation."""

    def __init__(self, station: SimStation) -> None:
        super().__init__(station.station_id, station._ws,
                         response_timeout=station.response_timeout_s)
        self.sim = station

    @on("SetChargingProfile")
    def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        return result16.SetChargingProfile(
            status=self.sim._set_profile(connector_id, _plain(cs_charging_profiles)))

    @on("GetCompositeSchedule")
    def on_composite(self, connector_id: int, duration: int,
                     charging_rate_unit: str | None = None) -> Any:
        if connector_id != 0 and connector_id not in self.sim.evses:
            return result16.GetCompositeSchedule(status="Rejected")
        unit = charging_rate_unit or "A"
        start, periods = self.sim.composite(connector_id, duration, unit)
        return result16.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start=_iso(start),
            charging_schedule={"duration": duration, "start_schedule": _iso(start),
                               "charging_rate_unit": unit,
                               "charging_schedule_period": periods})

    @on("ClearChargingProfile")
    def on_clear(self, id: int | None = None, connector_id: int | None = None,
                 charging_profile_purpose: str | None = None,
                 stack_level: int | None = None) -> Any:
        return result16.ClearChargingProfile(status=self.sim._clear(
            id, connector_id, charging_profile_purpose, stack_level))


class _Handlers2x:
    """The 2.0.1 and 2.1 wire side of a SimStation (mixed into each version's class)."""

    sim: SimStation
    results: Any

    @on("SetChargingProfile")
    def on_set(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return self.results.SetChargingProfile(
            status=self.sim._set_profile(evse_id, _plain(charging_profile)))

    @on("GetCompositeSchedule")
    def on_composite(self, duration: int, evse_id: int, charging_rate_unit: str | None = None,
                     **_: Any) -> Any:
        if evse_id != 0 and evse_id not in self.sim.evses:
            return self.results.GetCompositeSchedule(status="Rejected")
        unit = charging_rate_unit or "A"
        start, periods = self.sim.composite(evse_id, duration, unit)
        return self.results.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": _iso(start),
            "charging_rate_unit": unit, "charging_schedule_period": periods})

    @on("ClearChargingProfile")
    def on_clear(self, charging_profile_id: int | None = None,
                 charging_profile_criteria: dict[str, Any] | None = None, **_: Any) -> Any:
        criteria = charging_profile_criteria or {}
        return self.results.ClearChargingProfile(status=self.sim._clear(
            charging_profile_id, criteria.get("evse_id"),
            criteria.get("charging_profile_purpose"), criteria.get("stack_level")))


class _Link201(_Handlers2x, ChargePoint201):  # type: ignore[misc]
    results = result201

    def __init__(self, station: SimStation) -> None:
        super().__init__(station.station_id, station._ws,
                         response_timeout=station.response_timeout_s)
        self.sim = station


class _Link21(_Handlers2x, ChargePoint21):  # type: ignore[misc]
    results = result21

    def __init__(self, station: SimStation) -> None:
        super().__init__(station.station_id, station._ws,
                         response_timeout=station.response_timeout_s)
        self.sim = station

    async def _handle_call(self, msg: Any) -> None:
        # ocpp 2.1.0 sends no reply at all to a 2.1 action without a handler
        if msg.action not in self.route_map:
            raise OcppNotImplemented(details={"cause": f"no handler for {msg.action}"})
        await super()._handle_call(msg)


__all__ = ["EvseState", "SimEv", "SimEvse", "SimStation", "Version"]
