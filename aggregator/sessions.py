"""Sessions from what EVs tell their stations (OCPP 2.x charging needs), with defaults.

AC cars rarely send their battery size or state of charge; the defaults fill what the EV
did not say, and every limit is capped by what the EVSE can do (discharge only where
the EVSE is V2G-capable on OCPP 2.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from adapters.ocpp.csms import EvNeeds
from aggregator.model import Evse, Measurand, MeterSample, Session


@dataclass(frozen=True)
class SessionDefaults:
    """What to assume when an EV does not say (a fleet or site setting)."""

    battery_capacity_kwh: float = 60.0
    soc: float = 0.3
    dwell: timedelta = timedelta(hours=8)
    min_soc_v2g: float = 0.4
    energy_kwh: float | None = None  # the energy wish of an EV that says none (None: full)
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95


def session_from_needs(session_id: str, evse: Evse, arrival: datetime, needs: EvNeeds,
                       defaults: SessionDefaults | None = None) -> Session:
    """A ``Session`` at ``evse`` from the EV's needs, the EVSE's limits and the defaults."""
    d = defaults or SessionDefaults()
    capacity = needs.capacity_kwh or d.battery_capacity_kwh
    soc = needs.soc if needs.soc is not None else d.soc
    room = capacity * (1.0 - soc)
    departure = needs.departure if needs.departure is not None and needs.departure > arrival \
        else arrival + d.dwell
    discharge = 0.0
    if evse.can_discharge and needs.max_discharge_kw:
        discharge = min(needs.max_discharge_kw, evse.max_export_kw)
    floor = d.min_soc_v2g
    if needs.min_v2x_energy_kwh is not None:  # relative to the present SoC
        floor = max(floor, min(1.0, soc + needs.min_v2x_energy_kwh / capacity))
    max_soc = None if needs.max_energy_kwh is None else \
        min(1.0, max(0.0, soc + needs.max_energy_kwh / capacity))
    wish: dict[str, float] = {}
    if needs.target_soc is not None:
        wish["target_soc"] = needs.target_soc
    else:
        asked = needs.energy_kwh if needs.energy_kwh is not None else d.energy_kwh
        wish["energy_requested_kwh"] = min(room, asked if asked is not None else room)
    ev_max_kw = needs.max_charge_kw
    if ev_max_kw is None and needs.max_current_a is not None:  # AC: amps per phase
        ev_max_kw = needs.max_current_a * evse.phases * evse.voltage_v / 1000.0
    return Session(
        session_id=session_id, evse_id=evse.evse_id, arrival=arrival, departure=departure,
        battery_capacity_kwh=capacity, soc_initial=soc,
        max_charge_kw=evse.max_import_kw if ev_max_kw is None
        else min(ev_max_kw, evse.max_import_kw),
        max_discharge_kw=discharge, min_soc_v2g=floor, max_soc=max_soc,
        charge_efficiency=d.charge_efficiency, discharge_efficiency=d.discharge_efficiency,
        **wish)


@dataclass
class LiveSession:
    """A plugged-in EV as the stations report it: its ``Session`` and what was measured."""

    session: Session
    station_id: str
    evse_number: int
    transaction_id: str
    import_wh: tuple[float, float] | None = None  # (first, latest) register reading
    export_wh: tuple[float, float] | None = None
    soc: float | None = None  # last measured state of charge, 0..1
    power_kw: float | None = None  # last measured net power (+ import, - export)
    power_at: datetime | None = None
    ended_at: datetime | None = None
    ev_limit_kw: float | None = None  # the EV drew less than planned: what it takes
    soc_from_ev: bool = False  # the EV said its SoC at arrival (else a default stands in)
    capacity_from_ev: bool = False  # the EV said its battery size (else a default)

    @property
    def imported_kwh(self) -> float:
        return 0.0 if self.import_wh is None else (self.import_wh[1] - self.import_wh[0]) / 1e3

    @property
    def exported_kwh(self) -> float:
        return 0.0 if self.export_wh is None else (self.export_wh[1] - self.export_wh[0]) / 1e3

    def soc_now(self) -> float:
        """The SoC to plan from, in the session's own terms.

        A reported SoC is used as is when the battery size is known or the wish is a
        target SoC.  An energy wish on an assumed battery size is followed by the meter
        (arrival SoC plus metered energy), so the assumed size cannot make it end early.
        """
        s = self.session
        if self.soc is not None and (self.capacity_from_ev or s.target_soc is not None):
            return self.soc
        energy = s.energy_initial_kwh + self.imported_kwh * s.charge_efficiency \
            - self.exported_kwh / s.discharge_efficiency
        return min(1.0, max(0.0, energy / s.battery_capacity_kwh))


@dataclass(frozen=True)
class PowerReading:
    """A measured net power at an EVSE (+ import, - export), for deviation checks."""

    evse_id: str
    at: datetime
    power_kw: float


class SessionTracker:
    """Turns station events and meter samples into the sessions the controller plans.

    ``evses`` maps (station id, EVSE/connector number) to the EVSE.  A session starts with
    its transaction (arrival = the station's timestamp) on the defaults, takes the EV's
    charging needs when they come, and follows its meter: SoC, registers and power.
    """

    def __init__(self, evses: dict[tuple[str, int], Evse],
                 defaults: SessionDefaults | None = None) -> None:
        self.evses = evses
        self.defaults = defaults or SessionDefaults()
        self.live: dict[str, LiveSession] = {}
        self.finished: list[LiveSession] = []
        self._by_tx: dict[tuple[str, int, str], str] = {}
        self._known: dict[str, LiveSession] = {}  # running and finished, by session id

    @staticmethod
    def session_id(station_id: str, evse_number: int, transaction_id: str) -> str:
        return f"{station_id}/{evse_number}/{transaction_id}"

    def start(self, station_id: str, evse_number: int, transaction_id: str, at: datetime,
              needs: EvNeeds | None = None) -> LiveSession | None:
        """A transaction began; None when the EVSE is not one gridflex plans."""
        evse = self.evses.get((station_id, evse_number))
        if evse is None:
            return None
        key = (station_id, evse_number, transaction_id)
        if key in self._by_tx:  # a repeated Started event
            return self.live.get(self._by_tx[key])
        session_id = self.session_id(*key)
        known = needs or EvNeeds(received_at=at, departure=None, energy_kwh=None, raw={})
        live = LiveSession(session_from_needs(session_id, evse, at, known, self.defaults),
                           station_id, evse_number, transaction_id,
                           soc_from_ev=known.soc is not None,
                           capacity_from_ev=known.capacity_kwh is not None)
        self.live[session_id] = self._known[session_id] = live
        self._by_tx[key] = session_id
        return live

    def update_needs(self, station_id: str, evse_number: int, needs: EvNeeds) -> bool:
        """The EV said what it needs: its running session is re-derived from them."""
        live = next((s for s in self.live.values()
                     if (s.station_id, s.evse_number) == (station_id, evse_number)), None)
        if live is None:
            return False
        evse = self.evses[(station_id, evse_number)]
        live.session = session_from_needs(live.session.session_id, evse, live.session.arrival,
                                          needs, self.defaults)
        live.soc_from_ev = needs.soc is not None
        live.capacity_from_ev = needs.capacity_kwh is not None
        _rebase(live)
        return True

    def end(self, station_id: str, evse_number: int, transaction_id: str | None,
            at: datetime) -> LiveSession | None:
        key = next((k for k in self._by_tx if k[:2] == (station_id, evse_number)
                    and (transaction_id is None or k[2] == transaction_id)
                    and self._by_tx[k] in self.live), None)
        if key is None:
            return None
        live = self.live.pop(self._by_tx[key])
        live.ended_at = at
        self.finished.append(live)
        return live

    def observe(self, samples: Iterable[MeterSample]) -> list[PowerReading]:
        """Registers, SoC and power of running sessions; returns one net power reading
        per EVSE and meter time (import minus export, whichever order they came in)."""
        net: dict[tuple[str, datetime], float] = {}
        for sample in samples:
            if sample.transaction_id is None or sample.phase:
                continue
            session_id = self._by_tx.get((sample.station_id, sample.evse_number,
                                          sample.transaction_id))
            live = self._known.get(session_id) if session_id else None
            if live is None:
                continue
            m = sample.measurand
            if m is Measurand.ENERGY_IMPORT:
                live.import_wh = _register(live.import_wh, sample.value)
            elif m is Measurand.ENERGY_EXPORT:
                live.export_wh = _register(live.export_wh, sample.value)
            elif m is Measurand.SOC:
                live.soc = min(1.0, max(0.0, sample.value / 100.0))
                _rebase(live)
            elif live.ended_at is None:
                sign = 1.0 if m is Measurand.POWER_IMPORT else -1.0
                key = (live.session.session_id, sample.measured_at)
                net[key] = net.get(key, 0.0) + sign * sample.value / 1e3
        readings: list[PowerReading] = []
        for (session_id, at), power_kw in sorted(net.items(), key=lambda item: item[0][1]):
            live = self._known[session_id]
            if live.power_at is None or at >= live.power_at:
                live.power_kw, live.power_at = power_kw, at
            readings.append(PowerReading(live.session.evse_id, at, power_kw))
        return readings

    def limit_ev(self, evse_id: str, limit_kw: float) -> None:
        """The EV at ``evse_id`` took only ``limit_kw``: plan it with that from now on."""
        for live in self.live.values():
            if live.session.evse_id == evse_id:
                live.ev_limit_kw = limit_kw

    def planning_sessions(self, start: datetime, overstay: timedelta) -> tuple[
            list[Session], dict[str, float]]:
        """Running sessions to plan from ``start`` and their SoC now.

        An EV still plugged in after its departure is planned for ``overstay`` more, so it
        is never left without a profile.
        """
        sessions: list[Session] = []
        soc: dict[str, float] = {}
        for live in self.live.values():
            s = live.session
            if s.departure <= start:
                s = replace(s, departure=start + overstay)
            if live.ev_limit_kw is not None:
                s = replace(s, max_charge_kw=min(s.max_charge_kw, live.ev_limit_kw))
            sessions.append(s)
            soc[s.session_id] = live.soc_now()
        return sessions, soc


def _rebase(live: LiveSession) -> None:
    """Once the EV reports its SoC, a defaulted arrival SoC is replaced by the one the
    measurement implies (what was metered since arrival taken back), so an energy wish
    "on top of the arrival SoC" is counted from where the battery really was."""
    if live.soc_from_ev or live.soc is None:
        return
    s = live.session
    metered_kwh = live.imported_kwh * s.charge_efficiency - live.exported_kwh / \
        s.discharge_efficiency
    arrival_soc = min(1.0, max(0.0, live.soc - metered_kwh / s.battery_capacity_kwh))
    room_kwh = s.battery_capacity_kwh * (1.0 - arrival_soc)
    wish = s.energy_requested_kwh
    live.session = replace(s, soc_initial=arrival_soc,
                           energy_requested_kwh=None if wish is None else min(wish, room_kwh))
    live.soc_from_ev = True


def _register(known: tuple[float, float] | None, value: float) -> tuple[float, float]:
    """(first, highest) of a register: planning ignores a reset (settlement flags it)."""
    return (value, value) if known is None else (known[0], max(known[1], value))
