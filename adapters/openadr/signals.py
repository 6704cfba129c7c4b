"""Translate one OpenADR 2.0b event (openleadr's parsed dict) into constraints, prices and
demand charges.

Pure: no I/O and no clock.  Every value is checked and a bad one raises ``EventError`` naming
the field (``event_signals[0].intervals[2].signal_payload``).  What the signals mean:

- SIMPLE level -> the program's configured import cap for that level on the target nodes.
- LOAD_DISPATCH setpoint -> ``setpoint_kw`` (and an import cap, per program); delta ->
  baseline + delta; multiplier -> baseline x multiplier (``scale`` and W/kW honoured).
- LOAD_CONTROL x-loadControlCapacity -> fraction of the node's maximum import;
  x-loadControlLevelOffset -> SIMPLE level offset; x-loadControlPercentOffset -> baseline
  x (1 + pct/100); x-loadControlSetpoint -> as a dispatch setpoint.
- ELECTRICITY_PRICE / ENERGY_PRICE price, priceRelative, priceMultiplier -> ``PriceSignal``.
- DEMAND_CHARGE price (currency per kW), priceRelative / priceMultiplier (on the program's
  ``base_demand_charge_per_kw``) -> one ``DemandCharge`` per target node and interval: the
  planner pays it on the node's peak net import in the interval's window, so it flattens
  the peak.  A charge below 0 is refused (it would pay for a higher peak).
- Price and demand-charge payloads are currency: their ``measurement`` (currencyPerKWh,
  currencyPerKW) is not a power unit and is not converted.
- Bid signals and CHARGE_STATE are reported as unsupported.

Timing: start randomisation (``startafter``) shifts the whole event by a deterministic offset
drawn from the configured seed and the event id; the ramp-up period brings the first
interval's limit forward and the recovery period holds the last one after the end, so the
fleet is at the limit when the event starts and does not rebound into it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.openadr.config import TARGET_TYPES, ProgramConfig, VenConfig
from aggregator.model import DemandCharge, GridConstraint, ModelError, PriceSignal

SOURCE = "openadr"
BaselineKw = Callable[[str, datetime, datetime], float]
"""Baseline of a node over a window in kW (the aggregator supplies it)."""

OPEN_ENDED = timedelta(days=365)
"""How long an open-ended (duration 0) last interval is held: until the VTN cancels it."""
_SCALE = {"p": 1e-12, "n": 1e-9, "micro": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1,
          "none": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_PRICE_SIGNALS = ("ELECTRICITY_PRICE", "ENERGY_PRICE")
_DEMAND_CHARGE = "DEMAND_CHARGE"
_UNSUPPORTED = ("BID_PRICE", "BID_LOAD", "BID_ENERGY", "CHARGE_STATE")


class EventError(ModelError):
    """An OpenADR event cannot be read; ``field`` names the offending part."""


@dataclass(frozen=True, slots=True)
class EventPlan:
    """What an event means for gridflex, with the facts its provenance needs."""

    event_id: str
    modification_number: int
    market_context: str
    status: str
    test_event: bool
    start: datetime
    end: datetime
    start_offset: timedelta
    nodes: tuple[str, ...]
    constraints: tuple[GridConstraint, ...] = ()
    prices: tuple[PriceSignal, ...] = ()
    demand_charges: tuple[DemandCharge, ...] = ()
    unsupported: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def scope(self) -> str:
        """The constraint-book scope of this event (one per event id)."""
        return f"event:{self.event_id}"

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


def start_offset(seed: int, event_id: str, startafter: timedelta) -> timedelta:
    """A deterministic start randomisation in ``[0, startafter)`` for this VEN and event."""
    if startafter <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{seed}:{event_id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=math.floor(fraction * startafter.total_seconds()))


def translate(event: Mapping[str, Any], config: VenConfig, *, received_at: datetime,
              baseline_kw: BaselineKw | None = None) -> EventPlan:
    """Read ``event`` (openleadr's dict) under ``config`` into an ``EventPlan``."""
    if not isinstance(event, Mapping):
        raise EventError("event", "must be a mapping")
    descriptor = _mapping(event.get("event_descriptor"), "event_descriptor")
    event_id = _text(descriptor.get("event_id"), "event_descriptor.event_id")
    modification = descriptor.get("modification_number", 0)
    if isinstance(modification, bool) or not isinstance(modification, int) or modification < 0:
        raise EventError("event_descriptor.modification_number",
                         f"must be a non-negative integer, got {modification!r}")
    market_context = str(descriptor.get("market_context") or "")
    status = str(descriptor.get("event_status") or "")
    program = config.program(market_context)
    test_event = _is_test(descriptor.get("test_event", False))
    oadr_priority = descriptor.get("priority", 0)
    if isinstance(oadr_priority, bool) or not isinstance(oadr_priority, int) or oadr_priority < 0:
        raise EventError("event_descriptor.priority", f"must be a non-negative integer, "
                                                      f"got {oadr_priority!r}")

    period = _mapping(event.get("active_period"), "active_period")
    start = _utc(period.get("dtstart"), "active_period.dtstart")
    duration = _duration(period.get("duration"), "active_period.duration", allow_zero=True)
    ramp_up = _duration(period.get("ramp_up"), "active_period.ramp_up", optional=True)
    recovery = _duration(period.get("recovery"), "active_period.recovery", optional=True)
    tolerance = period.get("tolerance") or {}
    startafter = timedelta(0)
    if tolerance:
        tolerate = _mapping(_mapping(tolerance, "active_period.tolerance").get("tolerate") or {},
                            "active_period.tolerance.tolerate")
        startafter = _duration(tolerate.get("startafter"),
                               "active_period.tolerance.tolerate.startafter", optional=True)
    offset = start_offset(config.randomization_seed, event_id, startafter)

    event_nodes = _nodes(event.get("targets"), config, "targets")
    signals = event.get("event_signals")
    if isinstance(signals, Mapping):  # openleadr sometimes nests the list one level deeper
        signals = signals.get("event_signals")
    if not isinstance(signals, list) or not signals:
        raise EventError("event_signals", "must be a non-empty list")

    constraints: list[GridConstraint] = []
    prices: list[PriceSignal] = []
    demand_charges: list[DemandCharge] = []
    unsupported: list[str] = []
    notes: list[str] = []
    end = start + duration  # the intervals may reach further (or be open-ended)
    # priority: OpenADR 1 is the highest and 0 means "none"; gridflex lets higher numbers win
    priority = program.priority * 1000 + (1000 - oadr_priority if oadr_priority else 0)
    for s_index, raw_signal in enumerate(signals):
        where = f"event_signals[{s_index}]"
        signal = _mapping(raw_signal, where)
        name = _text(signal.get("signal_name"), f"{where}.signal_name")
        kind = _text(signal.get("signal_type"), f"{where}.signal_type")
        signal_id = str(signal.get("signal_id") or s_index)
        nodes = event_nodes
        if signal.get("targets"):
            nodes = _nodes(signal.get("targets"), config, f"{where}.targets")
        priced = name.upper() in _PRICE_SIGNALS or name.upper() == _DEMAND_CHARGE
        if priced:  # currency per kWh or kW: nothing to convert to kW
            factor_kw = 1.0
            if signal.get("measurement"):
                _mapping(signal.get("measurement"), f"{where}.measurement")
        else:
            factor_kw = _power_factor_kw(signal.get("measurement"), f"{where}.measurement")
        intervals = _intervals(signal.get("intervals"), where, start)
        if intervals:
            end = max(end, max(i_end for _, i_end, _ in intervals))
        if name.upper() in _UNSUPPORTED:
            unsupported.append(f"{name}/{kind}")
            continue
        last = len(intervals) - 1
        for i_index, (i_start, i_end, payload) in enumerate(intervals):
            field_name = f"{where}.intervals[{i_index}].signal_payload"
            window_start = i_start + offset - (ramp_up if i_index == 0 else timedelta(0))
            window_end = i_end + offset + (recovery if i_index == last else timedelta(0))
            ref = (f"event {event_id} mod {modification} ({market_context or 'no context'}) "
                   f"signal {name}/{kind} {signal_id} interval {i_index}: {payload:g}")
            if i_index == 0 and ramp_up:
                ref += f"; ramp-up {ramp_up}"
            if i_index == last and recovery:
                ref += f"; recovery {recovery}"
            if offset:
                ref += f"; start randomised +{offset}"
            if name.upper() in _PRICE_SIGNALS:
                prices.append(_price(kind, payload, program, field_name, window_start,
                                     window_end))
                continue
            if name.upper() == _DEMAND_CHARGE:
                per_kw = _demand_charge_per_kw(kind, payload, program, field_name)
                demand_charges.extend(
                    _charge(node, window_start, window_end, per_kw, ref, received_at,
                            field_name) for node in nodes)
                continue
            for node in nodes:
                constraint = _limit(name.upper(), kind, payload, factor_kw, node, program,
                                    config, baseline_kw, field_name, window_start, window_end,
                                    ref, received_at, priority)
                if constraint is not None:
                    constraints.append(constraint)
    if test_event:
        notes.append("test event: logged, no action")
    return EventPlan(
        event_id=event_id, modification_number=modification, market_context=market_context,
        status=status, test_event=test_event,
        start=start + offset - ramp_up, end=end + offset + recovery, start_offset=offset,
        nodes=event_nodes,
        constraints=() if test_event else tuple(constraints),
        prices=() if test_event else tuple(prices),
        demand_charges=() if test_event else tuple(demand_charges),
        unsupported=tuple(unsupported), notes=tuple(notes))


def _limit(name: str, kind: str, payload: float, factor_kw: float, node: str,
           program: ProgramConfig, config: VenConfig, baseline_kw: BaselineKw | None,
           field_name: str, start: datetime, end: datetime, ref: str, received_at: datetime,
           priority: int) -> GridConstraint | None:
    """One interval's payload as a constraint on ``node`` (None: the level means no limit)."""

    def make(**limits: float | None) -> GridConstraint:
        try:
            return GridConstraint(node_id=node, start=start, end=end, source=SOURCE,
                                  source_ref=ref, received_at=received_at, priority=priority,
                                  **limits)  # type: ignore[arg-type]
        except ModelError as err:
            raise EventError(field_name, err.message) from err

    def baseline() -> float:
        if baseline_kw is None:
            raise EventError(field_name, f"{name}/{kind} needs a baseline for node {node!r}, "
                                         "and none is configured")
        return baseline_kw(node, start, end)

    def level_cap(level: float) -> GridConstraint | None:
        if level != int(level) or not 0 <= level <= 3:
            raise EventError(field_name, f"a SIMPLE level must be 0..3, got {level:g}")
        cap_kw = program.simple_levels_kw.get(int(level))
        if cap_kw is None:
            if level == 0:
                return None
            raise EventError(field_name, f"program {program.market_context!r} maps no cap "
                                         f"to SIMPLE level {int(level)}")
        return make(import_max_kw=cap_kw)

    def setpoint(value_kw: float) -> GridConstraint:
        cap_kw = max(value_kw, 0.0) if program.dispatch_setpoint_is_cap else None
        return make(setpoint_kw=value_kw, import_max_kw=cap_kw)

    if name == "SIMPLE" and kind == "level":
        return level_cap(payload)
    if name == "LOAD_DISPATCH":
        if kind == "setpoint":
            return setpoint(payload * factor_kw)
        if kind == "delta":
            return make(import_max_kw=max(baseline() + payload * factor_kw, 0.0))
        if kind == "multiplier":
            if payload < 0:
                raise EventError(field_name, f"a multiplier must be >= 0, got {payload:g}")
            return make(import_max_kw=baseline() * payload)
    if name == "LOAD_CONTROL":
        if kind == "x-loadControlCapacity":
            if not 0 <= payload <= 1:
                raise EventError(field_name, f"a capacity fraction must be 0..1, got {payload:g}")
            maximum = config.node_max_import_kw.get(node)
            if maximum is None:
                raise EventError(field_name, f"x-loadControlCapacity needs node_max_import_kw "
                                             f"for node {node!r}")
            return make(import_max_kw=maximum * payload)
        if kind == "x-loadControlLevelOffset":
            return level_cap(payload)
        if kind == "x-loadControlPercentOffset":
            return make(import_max_kw=max(baseline() * (1 + payload / 100), 0.0))
        if kind == "x-loadControlSetpoint":
            return setpoint(payload * factor_kw)
    raise EventError(field_name.rsplit(".intervals", 1)[0] + ".signal_type",
                     f"signal {name} of type {kind!r} is not understood")


def _price(kind: str, payload: float, program: ProgramConfig, field_name: str,
           start: datetime, end: datetime) -> PriceSignal:
    value = _relative(kind, payload, program.base_import_price_per_kwh, "a price signal",
                      field_name)
    try:
        return PriceSignal(start=start, end=end, import_price_per_kwh=value,
                           export_price_per_kwh=value * program.export_price_ratio,
                           source=SOURCE)
    except ModelError as err:
        raise EventError(field_name, err.message) from err


def _relative(kind: str, payload: float, base: float, what: str, field_name: str) -> float:
    """A price-type payload as a value: absolute (``price``), added to the program's base
    (``priceRelative``) or multiplying it (``priceMultiplier``)."""
    if kind == "price":
        return payload
    if kind == "priceRelative":
        return base + payload
    if kind == "priceMultiplier":
        return base * payload
    raise EventError(field_name.rsplit(".intervals", 1)[0] + ".signal_type",
                     f"{what} of type {kind!r} is not understood")


def _demand_charge_per_kw(kind: str, payload: float, program: ProgramConfig,
                          field_name: str) -> float:
    """A DEMAND_CHARGE payload as currency per kW (never below 0)."""
    base = program.base_demand_charge_per_kw
    if kind == "priceMultiplier" and payload < 0:
        raise EventError(field_name, f"a multiplier must be >= 0, got {payload:g}")
    value = _relative(kind, payload, base, "a demand charge", field_name)
    if value < 0:
        raise EventError(field_name, f"a demand charge must be >= 0 per kW, got {value:g}"
                         + (f" ({base:g} {payload:+g})" if kind == "priceRelative" else ""))
    return value


def _charge(node: str, start: datetime, end: datetime, per_kw: float, ref: str,
            received_at: datetime, field_name: str) -> DemandCharge:
    try:
        return DemandCharge(node_id=node, start=start, end=end, price_per_kw=per_kw,
                            source=SOURCE, source_ref=ref, received_at=received_at)
    except ModelError as err:
        raise EventError(field_name, err.message) from err


def _nodes(targets: Any, config: VenConfig, where: str) -> tuple[str, ...]:
    """Grid nodes named by OpenADR targets, through the configured target map."""
    if targets is None:
        return config.default_nodes
    if not isinstance(targets, list):
        raise EventError(where, "must be a list of targets")
    nodes: list[str] = []
    for index, target in enumerate(targets):
        target = _mapping(target, f"{where}[{index}]")
        for target_type, value in target.items():
            if target_type not in TARGET_TYPES:
                continue  # e.g. end_device_asset: nothing gridflex maps
            mapped = config.targets.get(target_type, {}).get(str(value))
            if mapped is None and target_type == "ven_id":
                mapped = config.default_nodes  # the VEN itself: its configured default nodes
            nodes.extend(mapped or ())
    return tuple(dict.fromkeys(nodes))


def _intervals(raw: Any, where: str,
               start: datetime) -> list[tuple[datetime, datetime, float]]:
    if not isinstance(raw, list) or not raw:
        raise EventError(f"{where}.intervals", "must be a non-empty list")
    result: list[tuple[datetime, datetime, float]] = []
    cursor = start
    for index, item in enumerate(raw):
        here = f"{where}.intervals[{index}]"
        interval = _mapping(item, here)
        i_start = (_utc(interval["dtstart"], f"{here}.dtstart")
                   if interval.get("dtstart") is not None else cursor)
        length = _duration(interval.get("duration"), f"{here}.duration",
                           allow_zero=index == len(raw) - 1)
        i_end = i_start + (length or OPEN_ENDED)  # 0 on the last interval: until cancelled
        payload = interval.get("signal_payload")
        if isinstance(payload, bool) or not isinstance(payload, (int, float)):
            raise EventError(f"{here}.signal_payload", f"must be a number, got {payload!r}")
        if not math.isfinite(payload):
            raise EventError(f"{here}.signal_payload", f"must be finite, got {payload!r}")
        result.append((i_start, i_end, float(payload)))
        cursor = i_end
    return result


def _power_factor_kw(measurement: Any, where: str) -> float:
    """kW per payload unit: W or kW with the SI scale; no measurement means kW."""
    if not measurement:
        return 1.0
    spec = _mapping(measurement, where)
    unit = str(spec.get("unit") or "W")
    scale = str(spec.get("scale") or "none")
    if scale not in _SCALE:
        raise EventError(f"{where}.scale", f"unknown SI scale {scale!r}")
    if unit == "W":
        return _SCALE[scale] / 1000.0
    if unit.lower() == "kw":
        return _SCALE[scale]
    raise EventError(f"{where}.unit", f"power must be in W or kW, got {unit!r}")


def _is_test(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return text not in ("", "false", "0", "none")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EventError(where, "missing or not a mapping")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventError(where, "missing or empty")
    return value


def _utc(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise EventError(where, f"must be a timezone-aware time, got {value!r}")
    return value.astimezone(UTC)


def _duration(value: Any, where: str, *, optional: bool = False,
              allow_zero: bool = False) -> timedelta:
    if value is None and optional:
        return timedelta(0)
    if not isinstance(value, timedelta):
        raise EventError(where, f"must be a duration, got {value!r}")
    if value < timedelta(0) or (value == timedelta(0) and not (allow_zero or optional)):
        raise EventError(where, f"must be positive, got {value}")
    return value

