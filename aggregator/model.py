"""The domain model: grid nodes, EVSEs, sessions, grid constraints, prices, demand charges
and schedules.

Units are in the names (``_kw``, ``_kwh``, ``_a``, ``_v``, ``_s``); every datetime is
timezone-aware UTC.  Objects validate themselves on construction and raise
:class:`ModelError` naming the offending field, so bad data never reaches the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd


class ModelError(ValueError):
    """A domain object was given an invalid value; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def require_utc(value: datetime, field_name: str) -> datetime:
    """Return ``value`` if it is a timezone-aware datetime at UTC offset zero."""
    if not isinstance(value, datetime):
        raise ModelError(field_name, f"expected a datetime, got {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise ModelError(field_name, "datetime must be timezone-aware (UTC)")
    if offset != timedelta(0):
        raise ModelError(field_name, f"datetime must be in UTC, got offset {offset}")
    return value.astimezone(UTC)


def parse_utc(value: Any, path: str) -> datetime:
    """An ISO 8601 date-time with an offset, as UTC; ``ValueError`` names ``path``."""
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected an ISO 8601 date-time, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{path}: not an ISO 8601 date-time: {value!r}") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{path}: date-time without a UTC offset: {value!r}")
    return moment.astimezone(UTC)


def _finite(value: float, field_name: str, *, minimum: float | None = None,
            maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(field_name, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ModelError(field_name, f"must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise ModelError(field_name, f"must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ModelError(field_name, f"must be <= {maximum}, got {number}")
    return number


def _check_window(item: Any) -> None:
    """Normalise ``item.start`` / ``item.end`` to UTC and require start < end."""
    object.__setattr__(item, "start", require_utc(item.start, "start"))
    object.__setattr__(item, "end", require_utc(item.end, "end"))
    if item.end <= item.start:
        raise ModelError("end", "must be after start")


def _identifier(value: str, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelError(field_name, "must be a non-empty string")
    return value


class NodeKind(StrEnum):
    """Levels of the grid tree, top to bottom."""

    AREA = "area"
    FEEDER = "feeder"
    SITE = "site"

    @property
    def level(self) -> int:
        return list(NodeKind).index(self)


class OcppVersion(StrEnum):
    """OCPP versions a station may speak; only 2.1 can express discharge."""

    V16 = "1.6"
    V201 = "2.0.1"
    V21 = "2.1"


@dataclass(frozen=True, slots=True)
class GridNode:
    """A node of the grid tree: a DSO area, a feeder or a site (connection point)."""

    node_id: str
    kind: NodeKind
    parent_id: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        _identifier(self.node_id, "node_id")
        if not isinstance(self.kind, NodeKind):
            object.__setattr__(self, "kind", _enum(NodeKind, self.kind, "kind"))
        if self.parent_id is not None:
            _identifier(self.parent_id, "parent_id")


@dataclass(frozen=True, slots=True)
class Evse:
    """An EVSE (one charging point) attached to a site node.

    ``max_export_kw`` is the discharge rating; discharge is only ever planned for a
    V2G-capable EVSE whose station speaks OCPP 2.1.
    """

    evse_id: str
    node_id: str
    max_import_kw: float
    max_export_kw: float = 0.0
    phases: int = 3
    voltage_v: float = 230.0
    min_current_a: float = 6.0
    v2g_capable: bool = False
    ocpp_version: OcppVersion = OcppVersion.V201

    def __post_init__(self) -> None:
        _identifier(self.evse_id, "evse_id")
        _identifier(self.node_id, "node_id")
        _finite(self.max_import_kw, "max_import_kw", minimum=0.0)
        _finite(self.max_export_kw, "max_export_kw", minimum=0.0)
        if type(self.phases) is not int or self.phases not in (1, 3):
            raise ModelError("phases", f"must be the integer 1 or 3, got {self.phases!r}")
        if not isinstance(self.v2g_capable, bool):
            raise ModelError("v2g_capable", f"must be true or false, got {self.v2g_capable!r}")
        _finite(self.voltage_v, "voltage_v", minimum=1.0)
        _finite(self.min_current_a, "min_current_a", minimum=0.0)
        if not isinstance(self.ocpp_version, OcppVersion):
            object.__setattr__(self, "ocpp_version",
                               _enum(OcppVersion, self.ocpp_version, "ocpp_version"))
        if self.v2g_capable and self.ocpp_version is not OcppVersion.V21:
            raise ModelError("v2g_capable", "discharge needs OCPP 2.1; "
                             f"this EVSE speaks {self.ocpp_version.value}")
        if self.max_export_kw > 0 and not self.v2g_capable:
            raise ModelError("max_export_kw", "must be 0 unless v2g_capable is true")

    @property
    def min_power_kw(self) -> float:
        """Smallest non-zero power the EVSE accepts (minimum current on all phases)."""
        return self.min_current_a * self.phases * self.voltage_v / 1000.0

    @property
    def can_discharge(self) -> bool:
        return self.v2g_capable and self.max_export_kw > 0


@dataclass(frozen=True, slots=True)
class Session:
    """An EV plugged in at an EVSE from ``arrival`` to ``departure``.

    The energy wish is either ``energy_requested_kwh`` (on top of the current SoC) or
    ``target_soc``; V2G discharge never takes the battery below ``min_soc_v2g``.
    An EV stops charging once its wish is met, so a plan never fills it beyond its target
    unless the EV says it takes more: ``max_soc`` (e.g. from OCPP 2.1
    evMaxV2XEnergyRequest), the room a V2G plan may use to store cheap energy.
    Efficiencies are grid-to-battery (charge) and battery-to-grid (discharge).
    """

    session_id: str
    evse_id: str
    arrival: datetime
    departure: datetime
    battery_capacity_kwh: float
    soc_initial: float
    max_charge_kw: float
    energy_requested_kwh: float | None = None
    target_soc: float | None = None
    min_soc_v2g: float = 0.2
    max_discharge_kw: float = 0.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    max_soc: float | None = None

    def __post_init__(self) -> None:
        _identifier(self.session_id, "session_id")
        _identifier(self.evse_id, "evse_id")
        object.__setattr__(self, "arrival", require_utc(self.arrival, "arrival"))
        object.__setattr__(self, "departure", require_utc(self.departure, "departure"))
        if self.departure <= self.arrival:
            raise ModelError("departure", "must be after arrival")
        _finite(self.battery_capacity_kwh, "battery_capacity_kwh", minimum=0.1)
        _finite(self.soc_initial, "soc_initial", minimum=0.0, maximum=1.0)
        _finite(self.max_charge_kw, "max_charge_kw", minimum=0.0)
        _finite(self.max_discharge_kw, "max_discharge_kw", minimum=0.0)
        _finite(self.min_soc_v2g, "min_soc_v2g", minimum=0.0, maximum=1.0)
        _finite(self.charge_efficiency, "charge_efficiency", minimum=0.01, maximum=1.0)
        _finite(self.discharge_efficiency, "discharge_efficiency", minimum=0.01, maximum=1.0)
        if (self.energy_requested_kwh is None) == (self.target_soc is None):
            raise ModelError("energy_requested_kwh",
                             "give exactly one of energy_requested_kwh and target_soc")
        if self.energy_requested_kwh is not None:
            _finite(self.energy_requested_kwh, "energy_requested_kwh", minimum=0.0)
            room_kwh = self.battery_capacity_kwh * (1.0 - self.soc_initial)
            if self.energy_requested_kwh > room_kwh + 1e-9:
                raise ModelError("energy_requested_kwh",
                                 f"{self.energy_requested_kwh} kWh does not fit in the battery "
                                 f"({room_kwh:.3f} kWh free)")
        if self.target_soc is not None:
            _finite(self.target_soc, "target_soc", minimum=0.0, maximum=1.0)
        if self.max_soc is not None:
            _finite(self.max_soc, "max_soc", minimum=0.0, maximum=1.0)

    @property
    def energy_initial_kwh(self) -> float:
        return self.battery_capacity_kwh * self.soc_initial

    @property
    def energy_target_kwh(self) -> float:
        """Battery energy wanted at departure (never below what is already there)."""
        if self.energy_requested_kwh is not None:
            return min(self.battery_capacity_kwh,
                       self.energy_initial_kwh + self.energy_requested_kwh)
        assert self.target_soc is not None
        return max(self.energy_initial_kwh, self.battery_capacity_kwh * self.target_soc)

    @property
    def energy_floor_kwh(self) -> float:
        return self.battery_capacity_kwh * self.min_soc_v2g

    @property
    def energy_ceiling_kwh(self) -> float:
        """Battery energy the EV takes at most: its target, or ``max_soc`` when it says so
        (never below what it has or the V2G floor)."""
        said = self.battery_capacity_kwh * (self.max_soc or 0.0)
        return min(self.battery_capacity_kwh, max(self.energy_target_kwh, said,
                                                  self.energy_initial_kwh,
                                                  self.energy_floor_kwh))


@dataclass(frozen=True, slots=True)
class GridConstraint:
    """A limit a grid operator (or the configuration) puts on a node over a window.

    ``node_id`` names a grid node or an EVSE.  ``import_max_kw`` / ``export_max_kw`` cap
    the net flow into / out of the node; ``setpoint_kw`` asks for a net import (soft).
    ``source`` and ``source_ref`` say where it came from (provenance); a constraint with
    ``expires_at`` in the past no longer applies.
    """

    node_id: str
    start: datetime
    end: datetime
    source: str
    source_ref: str
    received_at: datetime
    import_max_kw: float | None = None
    export_max_kw: float | None = None
    setpoint_kw: float | None = None
    priority: int = 0
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        _identifier(self.node_id, "node_id")
        _check_window(self)
        _identifier(self.source, "source")
        if not isinstance(self.source_ref, str):
            raise ModelError("source_ref", "must be a string")
        object.__setattr__(self, "received_at", require_utc(self.received_at, "received_at"))
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", require_utc(self.expires_at, "expires_at"))
        if self.import_max_kw is not None:
            _finite(self.import_max_kw, "import_max_kw", minimum=0.0)
        if self.export_max_kw is not None:
            _finite(self.export_max_kw, "export_max_kw", minimum=0.0)
        if self.setpoint_kw is not None:
            _finite(self.setpoint_kw, "setpoint_kw")
        if self.import_max_kw is None and self.export_max_kw is None and self.setpoint_kw is None:
            raise ModelError("import_max_kw",
                             "give at least one of import_max_kw, export_max_kw, setpoint_kw")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ModelError("priority", "must be an integer")

    @property
    def effective_end(self) -> datetime:
        """The end of the window, or the expiry when that comes first."""
        return self.end if self.expires_at is None else min(self.end, self.expires_at)

    def applies_at(self, moment: datetime) -> bool:
        """True if the constraint is in its window and not expired at ``moment``."""
        return self.start <= moment < self.effective_end

    def touches(self, start: datetime, end: datetime) -> bool:
        """True if the constraint is in force at some moment of ``[start, end)``."""
        return self.start < end and self.effective_end > start


@dataclass(frozen=True, slots=True)
class PriceSignal:
    """Energy prices per kWh over a window (currency units are the scenario's)."""

    start: datetime
    end: datetime
    import_price_per_kwh: float
    export_price_per_kwh: float
    source: str = "config"

    def __post_init__(self) -> None:
        _check_window(self)
        _finite(self.import_price_per_kwh, "import_price_per_kwh")
        _finite(self.export_price_per_kwh, "export_price_per_kwh")


@dataclass(frozen=True, slots=True)
class DemandCharge:
    """A charge per kW on a grid node's highest net import over ``[start, end)``.

    ``price_per_kw`` (the scenario's currency per kW, >= 0) is paid once on the peak of
    the node's net import in the window: EV power and base load of every node below it,
    import minus export, as the caps see it (a peak tariff, or an OpenADR DEMAND_CHARGE
    interval).  ``source`` and ``source_ref`` say where it came from, ``received_at``
    when.  Two charges on one node are two separate peaks, each paid.  ``peak_reached_kw``
    is the net import the node already reached in the window before a plan's horizon
    (the controller fills it in): a receding plan pays only for going above it.
    """

    node_id: str
    start: datetime
    end: datetime
    price_per_kw: float
    source: str
    source_ref: str
    received_at: datetime
    peak_reached_kw: float = 0.0

    def __post_init__(self) -> None:
        _identifier(self.node_id, "node_id")
        _check_window(self)
        _finite(self.price_per_kw, "price_per_kw", minimum=0.0)
        _finite(self.peak_reached_kw, "peak_reached_kw", minimum=0.0)
        _identifier(self.source, "source")
        if not isinstance(self.source_ref, str):
            raise ModelError("source_ref", "must be a string")
        object.__setattr__(self, "received_at", require_utc(self.received_at, "received_at"))

    def touches(self, start: datetime, end: datetime) -> bool:
        """True if the window overlaps ``[start, end)``."""
        return self.start < end and self.end > start


@dataclass(frozen=True)
class GridTree:
    """The grid nodes and the EVSEs hanging off the sites, checked to form a tree."""

    nodes: tuple[GridNode, ...]
    evses: tuple[Evse, ...]
    _by_id: dict[str, GridNode] = field(init=False, repr=False, compare=False)
    _evse_by_id: dict[str, Evse] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, GridNode] = {}
        for node in self.nodes:
            if node.node_id in by_id:
                raise ModelError("node_id", f"duplicate node {node.node_id!r}")
            by_id[node.node_id] = node
        for node in self.nodes:
            if node.parent_id is not None and node.parent_id not in by_id:
                raise ModelError("parent_id", f"node {node.node_id!r} names unknown parent "
                                 f"{node.parent_id!r}")
        for node in self.nodes:  # cycle check: walk up at most len(nodes) steps
            seen = {node.node_id}
            current = node
            while current.parent_id is not None:
                if current.parent_id in seen:
                    raise ModelError("parent_id", f"cycle through node {node.node_id!r}")
                seen.add(current.parent_id)
                current = by_id[current.parent_id]
        for node in self.nodes:
            parent = by_id[node.parent_id] if node.parent_id is not None else None
            if parent is not None and parent.kind.level > node.kind.level:
                raise ModelError("kind", f"{node.kind.value} {node.node_id!r} cannot hang "
                                 f"below {parent.kind.value} {parent.node_id!r}")
        evse_ids: set[str] = set()
        for evse in self.evses:
            if evse.evse_id in evse_ids or evse.evse_id in by_id:
                raise ModelError("evse_id", f"duplicate id {evse.evse_id!r}")
            evse_ids.add(evse.evse_id)
            if evse.node_id not in by_id:
                raise ModelError("node_id", f"EVSE {evse.evse_id!r} names unknown node "
                                 f"{evse.node_id!r}")
            if by_id[evse.node_id].kind is not NodeKind.SITE:
                raise ModelError("node_id", f"EVSE {evse.evse_id!r} must hang below a site "
                                 f"(connection point), not {by_id[evse.node_id].kind.value} "
                                 f"{evse.node_id!r}")
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_evse_by_id", {evse.evse_id: evse for evse in self.evses})

    def node(self, node_id: str) -> GridNode:
        return self._by_id[node_id]

    def has_node(self, node_id: str) -> bool:
        return node_id in self._by_id

    def evse(self, evse_id: str) -> Evse:
        return self._evse_by_id[evse_id]

    def can_constrain(self, node_id: str) -> bool:
        """True if ``node_id`` is a grid node or an EVSE (what a constraint may name)."""
        return node_id in self._by_id or node_id in self._evse_by_id

    def ancestors(self, node_id: str) -> list[str]:
        """The node itself and every node above it, bottom first."""
        chain = [node_id]
        parent = self._by_id[node_id].parent_id
        while parent is not None:
            chain.append(parent)
            parent = self._by_id[parent].parent_id
        return chain


@dataclass(frozen=True)
class Schedule:
    """A plan: kW per EVSE and per interval (+ charge, - discharge) with how it was found.

    ``power_kw`` has a UTC DatetimeIndex of interval starts and one column per EVSE;
    ``session_power_kw`` the same per session; ``soc`` the state of charge (0..1) at
    the end of each interval per session; ``unmet_kwh`` per session.
    """

    power_kw: pd.DataFrame
    session_power_kw: pd.DataFrame
    soc: pd.DataFrame
    unmet_kwh: pd.Series
    interval: timedelta
    objective: float
    status: str
    solver_stats: Mapping[str, Any]
    binding: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("power_kw", "session_power_kw", "soc"):
            frame = getattr(self, name)
            index = frame.index
            if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC":
                raise ModelError(name, "index must be a UTC DatetimeIndex")

    @property
    def intervals(self) -> pd.DatetimeIndex:
        index = self.power_kw.index
        assert isinstance(index, pd.DatetimeIndex)
        return index

    def node_load_kw(self, tree: GridTree, node_id: str) -> pd.Series:
        """Net EV power below ``node_id`` per interval (EVSEs of every site under it)."""
        below = [evse.evse_id for evse in tree.evses
                 if node_id in tree.ancestors(evse.node_id)]
        if not below:
            return pd.Series(np.zeros(len(self.power_kw)), index=self.power_kw.index)
        return self.power_kw[below].sum(axis=1)


def _enum(kind: type[Any], value: object, field_name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ModelError(field_name, f"unknown value {value!r} (allowed: {allowed})") from None


def sessions_by_evse(sessions: Iterable[Session]) -> dict[str, list[Session]]:
    """Group sessions per EVSE, sorted by arrival, rejecting overlaps on one EVSE."""
    grouped: dict[str, list[Session]] = {}
    for session in sessions:
        grouped.setdefault(session.evse_id, []).append(session)
    for evse_id, items in grouped.items():
        items.sort(key=lambda s: s.arrival)
        for before, after in pairwise(items):
            if after.arrival < before.departure:
                raise ModelError("arrival", f"sessions {before.session_id!r} and "
                                 f"{after.session_id!r} overlap on EVSE {evse_id!r}")
    return grouped


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """Non-EV load forecast of a node over a window (+ import, - generation)."""

    node_id: str
    start: datetime
    end: datetime
    load_kw: float

    def __post_init__(self) -> None:
        _identifier(self.node_id, "node_id")
        _check_window(self)
        _finite(self.load_kw, "load_kw")


class Measurand(StrEnum):
    """Meter quantities gridflex settles on; import and export are never netted."""

    ENERGY_IMPORT = "Energy.Active.Import.Register"
    ENERGY_EXPORT = "Energy.Active.Export.Register"
    POWER_IMPORT = "Power.Active.Import"
    POWER_EXPORT = "Power.Active.Export"
    SOC = "SoC"

    @property
    def unit(self) -> str:
        """The unit ``MeterSample.value`` is normalised to for this measurand."""
        if self in (Measurand.ENERGY_IMPORT, Measurand.ENERGY_EXPORT):
            return "Wh"
        if self in (Measurand.POWER_IMPORT, Measurand.POWER_EXPORT):
            return "W"
        return "Percent"


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One measured value from a station, as it arrived (meter time kept apart from ours).

    ``value`` is in ``measurand.unit`` (Wh, W or percent).  ``signed_data`` keeps a signed
    meter value (OCMF) verbatim.  ``key`` is the natural key that makes ingestion
    idempotent: station, EVSE, transaction, meter time, measurand, phase and reading
    context (a retransmission repeats all of them; a transaction's begin and end
    readings in the same second differ in context and are both kept).
    """

    station_id: str
    evse_number: int
    transaction_id: str | None
    measured_at: datetime
    measurand: Measurand
    value: float
    received_at: datetime
    evse_id: str | None = None
    phase: str | None = None
    context: str | None = None
    signed_data: str | None = None

    def __post_init__(self) -> None:
        _identifier(self.station_id, "station_id")
        if isinstance(self.evse_number, bool) or not isinstance(self.evse_number, int) or \
                self.evse_number < 0:
            raise ModelError("evse_number", f"must be an integer >= 0, got {self.evse_number!r}")
        object.__setattr__(self, "measured_at", require_utc(self.measured_at, "measured_at"))
        object.__setattr__(self, "received_at", require_utc(self.received_at, "received_at"))
        if not isinstance(self.measurand, Measurand):
            object.__setattr__(self, "measurand", _enum(Measurand, self.measurand, "measurand"))
        _finite(self.value, "value")

    @property
    def key(self) -> tuple[str, int, str | None, datetime, str, str | None, str | None]:
        return (self.station_id, self.evse_number, self.transaction_id, self.measured_at,
                self.measurand.value, self.phase, self.context)
