"""DSO timelines for replay, in each protocol's own terms, through the adapters' code.

- OpenADR 2.0b: events as openleadr hands them to the VEN (``event_descriptor``,
  ``active_period``, ``event_signals``), given to the live ``Ven.handle_event``: the same
  translation, opt decision and constraint-book updates as ``gridflex serve``.
- IEEE 2030.5: DERControl and DefaultDERControl XML, parsed by the adapter's hardened XML
  reader and run through its §10.2.3 event engine (``controls.evaluate``) at every step.
- IEC 61850-90-8: FSCH schedules (SchdPrio, StrTm, SchdIntv, ValASG in W, SchdSt),
  resolved by the adapter's priority rules (``values.resolve``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.iec61850.config import IedConfig
from adapters.iec61850.values import (
    RUNNING,
    ScheduleHeader,
    ScheduleReading,
    resolve,
    schedule_constraints,
)
from adapters.iec61850.values import SOURCE as IEC_SOURCE
from adapters.ieee2030_5.controls import SOURCE as SEP2_SOURCE
from adapters.ieee2030_5.controls import (
    Control,
    DefaultControl,
    Program,
    SiteNodes,
    control_from_model,
    default_from_model,
    evaluate,
    scope_for,
    to_constraints,
)
from adapters.openadr.config import VenConfig
from aggregator.constraints import ConstraintBook

SEP2_HORIZON = timedelta(hours=24)


@dataclass(frozen=True)
class Sep2Program:
    """A DERProgram as the server lists it: primacy, default control, and controls with
    the moment each was published."""

    program_id: str
    primacy: int
    default: DefaultControl | None = None
    controls: tuple[tuple[datetime, Control], ...] = ()


@dataclass(frozen=True)
class IecSchedule:
    """One FSCH as the IED holds it from ``at`` on."""

    at: datetime
    ied: str
    reading: ScheduleReading


@dataclass
class DsoFeeds:
    """The DSO side of a replay; ``start`` then ``deliver`` every step."""

    openadr: VenConfig | None = None
    sep2_sites: tuple[SiteNodes, ...] = ()
    sep2_programs: tuple[Sep2Program, ...] = ()
    ieds: Mapping[str, IedConfig] = field(default_factory=dict)
    _book: ConstraintBook | None = None
    _ven: Any = None
    _schedules: dict[str, dict[str, ScheduleReading]] = field(default_factory=dict)

    def start(self, book: ConstraintBook, clock: Callable[[], datetime], scratch: Path,
              controller: Any) -> None:
        """Bring the links up at the replay's start (the VEN keeps its state in scratch)."""
        self._book = book
        now = clock()
        if self.openadr is not None:
            from adapters.openadr.ven import Ven

            config = dataclasses.replace(self.openadr, state_file=scratch / "ven-state.json")
            self._ven = Ven(config, book, clock=clock, baseline_kw=controller.planned_node_kw)
            book.link_up("openadr", now)
        if self.sep2_sites:
            book.link_up(SEP2_SOURCE, now)
        if self.ieds:
            book.link_up(IEC_SOURCE, now)

    async def deliver(self, items: Sequence[Any], at: datetime, lost: set[str]) -> None:
        """Hand the items due now to their adapters; re-evaluate the 2030.5 timeline."""
        assert self._book is not None
        changed_ieds: set[str] = set()
        for item in items:
            if item.source == "openadr" and self._ven is not None:
                await self._ven.handle_event(item.payload)
            elif item.source == IEC_SOURCE:
                schedule: IecSchedule = item.payload
                self._schedules.setdefault(schedule.ied, {})[
                    schedule.reading.header.name] = schedule.reading
                changed_ieds.add(schedule.ied)
        for name in sorted(changed_ieds):
            self._publish_iec(name, at)
        if self.sep2_sites and SEP2_SOURCE not in lost:
            self._publish_sep2(at)

    def _publish_iec(self, name: str, at: datetime) -> None:
        assert self._book is not None
        ied = self.ieds[name]
        readings = [r for r in self._schedules.get(name, {}).values() if r.header.running]
        windows = resolve(readings, None, at)
        self._book.publish(IEC_SOURCE, f"ied:{name}",
                           schedule_constraints(windows, readings, ied, at), at)

    def _publish_sep2(self, at: datetime) -> None:
        """What the client would publish after a poll at ``at``: the programs as the
        server lists them then, evaluated by the event engine."""
        assert self._book is not None
        programs = [Program(p.program_id, p.primacy,
                            tuple(c for seen, c in p.controls if seen <= at), p.default)
                    for p in self.sep2_programs]
        for nodes in self.sep2_sites:
            evaluation = evaluate(programs, at, SEP2_HORIZON, seed=nodes.site,
                                  supported=nodes.supported())
            self._book.publish(SEP2_SOURCE, scope_for(nodes),
                               to_constraints(evaluation, nodes, received_at=at), at)


def sep2_control(xml: str, where: str) -> Control:
    """A DERControl from its XML (the adapter's reader: namespaces, no DTDs, size cap)."""
    from envoy_schema.server.schema.sep2.der import DERControlResponse

    from adapters.ieee2030_5.xml import parse

    try:
        return control_from_model(parse(xml.encode(), DERControlResponse))
    except Exception as err:
        raise ValueError(f"{where}: not a readable DERControl: {err}") from None


def sep2_default(xml: str, where: str) -> DefaultControl:
    """A DefaultDERControl from its XML."""
    from envoy_schema.server.schema.sep2.der import DefaultDERControl

    from adapters.ieee2030_5.xml import parse

    try:
        return default_from_model(parse(xml.encode(), DefaultDERControl))
    except Exception as err:
        raise ValueError(f"{where}: not a readable DefaultDERControl: {err}") from None


def iec_schedule(name: str, *, priority: int, start: datetime, interval_s: float,
                 values_w: Sequence[float], state: int = RUNNING,
                 max_kw: float = 1000.0, where: str = "schedule") -> ScheduleReading:
    """An FSCH reading from its attributes (ValASG in W, checked as the adapter checks)."""
    from adapters.iec61850.values import power_kw

    if interval_s <= 0:
        raise ValueError(f"{where}.SchdIntv: must be > 0 s, got {interval_s:g}")
    if not values_w:
        raise ValueError(f"{where}.ValASG: at least one entry")
    values_kw = tuple(power_kw(v, 0, f"{where}.ValASG[{i}]", max_kw)
                      for i, v in enumerate(values_w))
    header = ScheduleHeader(name=name, state=state, priority=priority, entries=len(values_kw),
                            interval_s=float(interval_s), start=start, quality="good")
    return ScheduleReading(header, values_kw)
