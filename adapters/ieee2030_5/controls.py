"""The DER event engine of IEEE 2030.5-2018 (§10.2.3, §10.10) for one site, and its grid limits.

Pure: no I/O and no clock.  "Now" is the *server's* time (from ``/tm``), passed in, and the
start/duration randomisation is drawn from a seed passed in (use the site's LFDI: devices are
meant to draw differently), so a re-poll gives the same answer.

Rules, per controlled quantity (``opModImpLimW``, ``opModExpLimW``, ...):

- across programs the lower ``primacy`` number wins; within a program the newer event
  (``creationTime``, then version, start and mRID as tie-breaks) wins where they overlap;
- an event whose program holds a newer overlapping event with at least the same controls is
  superseded (it ends when the newer one starts);
- cancelled (status 2) and superseded (status 4) events stop at once; cancelled with
  randomisation (3) ends at the cancellation time plus a random delay of up to
  max(|randomizeStart|, |randomizeDuration|), if it had started by then;
- the program's ``DefaultDERControl`` fills every gap where no event sets the quantity; the
  lowest-primacy program that has a default for the quantity wins;
- the Responses owed follow ``responseRequired`` (bit 0: received; bit 1: started, completed,
  cancelled, superseded; rejections 252/253/254 whenever either bit is set) minus what the
  :class:`ResponseLog` says was already sent.

:func:`to_constraints` turns the timeline into ``GridConstraint`` objects: ``opModImpLimW`` /
``opModExpLimW`` cap the site (connection point), ``opModLoadLimW`` / ``opModGenLimW`` cap
each EVSE of the site, ``opModConnect`` / ``opModEnergize`` false cap each EVSE to 0, and
``opModFixedW`` (a signed percentage of the site DER's ratings) becomes a site setpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from itertools import pairwise
from typing import NamedTuple

from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlBase,
    DERControlResponse,
    DERProgramResponse,
)
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.response import DERControlResponse as DERControlReply
from envoy_schema.server.schema.sep2.response import ResponseType

from aggregator.constraints import ConstraintSink
from aggregator.model import GridConstraint, require_utc

SOURCE = "ieee2030_5"
"""The ``source`` of every constraint this adapter publishes."""

Value = float | bool


class Quantity(StrEnum):
    """The DERControlBase modes gridflex executes (named as on the wire)."""

    IMPORT_LIMIT = "opModImpLimW"  # W, site connection point (CSIP-AUS)
    EXPORT_LIMIT = "opModExpLimW"  # W, site connection point (CSIP-AUS)
    LOAD_LIMIT = "opModLoadLimW"  # W, per device (CSIP-AUS)
    GENERATION_LIMIT = "opModGenLimW"  # W, per device (CSIP-AUS)
    FIXED_W = "opModFixedW"  # signed % of the DER's rating: + discharge, - charge
    CONNECT = "opModConnect"  # bool: false = disconnect
    ENERGIZE = "opModEnergize"  # bool: false = de-energise

    @property
    def unit(self) -> str:
        if self is Quantity.FIXED_W:
            return "%"
        return "" if self in (Quantity.CONNECT, Quantity.ENERGIZE) else "W"


WATT_QUANTITIES = (Quantity.IMPORT_LIMIT, Quantity.EXPORT_LIMIT, Quantity.LOAD_LIMIT,
                   Quantity.GENERATION_LIMIT)


class EventStatus(IntEnum):
    """EventStatus.currentStatus."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_RANDOMIZED = 3
    SUPERSEDED = 4


class ResponseStatus(IntEnum):
    """The Response.status codes this engine sends (2030.5 Table 27)."""

    RECEIVED = ResponseType.EVENT_RECEIVED.value
    STARTED = ResponseType.EVENT_STARTED.value
    COMPLETED = ResponseType.EVENT_COMPLETED.value
    CANCELLED = ResponseType.EVENT_CANCELLED.value
    SUPERSEDED = ResponseType.EVENT_SUPERSEDED.value
    NOT_APPLICABLE = ResponseType.REJECTED_CONTROL_PARAM_NOT_APPLICABLE.value
    INVALID = ResponseType.REJECTED_INVALID_EVENT.value
    RECEIVED_LATE = ResponseType.REJECTED_EVENT_RECEIVED_LATE.value


TERMINAL_STATUSES = frozenset({ResponseStatus.COMPLETED, ResponseStatus.CANCELLED,
                               ResponseStatus.SUPERSEDED, ResponseStatus.NOT_APPLICABLE,
                               ResponseStatus.INVALID, ResponseStatus.RECEIVED_LATE})
RESPONSE_RECEIVED_BIT = 0x01  # responseRequired bit 0: "message received"
RESPONSE_SPECIFIC_BIT = 0x02  # bit 1: "specific response" (started, completed, ...)
MAX_RANDOMIZE_S = 3600  # OneHourRangeType
MAX_FIXED_W_HUNDREDTHS = 10_000  # SignedPerCent: hundredths of a percent
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_UNIX_S = 253_402_300_799 - 400 * 86_400  # datetime's year 9999, with room for windows


# -- inputs -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Control:
    """One DERControl, as plain data (see :func:`control_from_model`).

    ``values`` are in the units of :attr:`Quantity.unit` (W already multiplied out).
    ``invalid_reason`` marks what a converter could not represent (the engine answers 253);
    ``ignored`` lists modes present but not executed by gridflex.
    """

    mrid: str
    creation_time: datetime
    start: datetime
    duration_s: int
    values: Mapping[Quantity, Value]
    status: int = EventStatus.SCHEDULED
    status_time: datetime | None = None
    randomize_start_s: int = 0
    randomize_duration_s: int = 0
    response_required: int = 0
    reply_to: str | None = None
    href: str | None = None
    version: int = 0
    device_category: int | None = None
    invalid_reason: str | None = None
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "creation_time", require_utc(self.creation_time, "creation_time"))
        object.__setattr__(self, "start", require_utc(self.start, "start"))
        if self.status_time is not None:
            object.__setattr__(self, "status_time", require_utc(self.status_time, "status_time"))


@dataclass(frozen=True, slots=True)
class DefaultControl:
    """A program's DefaultDERControl: what applies where no DERControl sets a quantity."""

    values: Mapping[Quantity, Value]
    href: str | None = None
    mrid: str | None = None
    invalid_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Program:
    """A DERProgram with its DERControls and DefaultDERControl."""

    program_id: str  # the DERProgram href (its mRID when there is no href)
    primacy: int
    controls: tuple[Control, ...] = ()
    default: DefaultControl | None = None
    description: str = ""


# -- converters from envoy-schema models ----------------------------------------------------

def values_from_base(base: DERControlBase) -> tuple[dict[Quantity, Value], list[str], list[str]]:
    """The executed values of a DERControlBase, the problems found and the modes ignored."""
    values: dict[Quantity, Value] = {}
    problems: list[str] = []
    for quantity in WATT_QUANTITIES:
        power = getattr(base, quantity.value)
        if power is not None:
            watts = _watts(power)
            if watts is None:
                problems.append(f"{quantity.value}: multiplier {power.multiplier} is outside "
                                f"-9..9")
            else:
                values[quantity] = watts
    if base.opModFixedW is not None:
        values[Quantity.FIXED_W] = base.opModFixedW / 100.0
    if base.opModConnect is not None:
        values[Quantity.CONNECT] = bool(base.opModConnect)
    if base.opModEnergize is not None:
        values[Quantity.ENERGIZE] = bool(base.opModEnergize)
    handled = {quantity.value for quantity in Quantity}
    ignored = [name for name in type(base).model_fields
               if name not in handled and getattr(base, name) is not None]
    return values, problems, ignored


def control_from_model(model: DERControlResponse) -> Control:
    """A :class:`Control` from envoy-schema's DERControl (times from Unix seconds to UTC)."""
    values, problems, ignored = values_from_base(model.DERControlBase_)
    status = model.EventStatus_
    start = _from_unix(model.interval.start)
    creation = _from_unix(model.creationTime)
    status_time = _from_unix(status.dateTime)
    if start is None or model.interval.start + max(model.interval.duration, 0) > _MAX_UNIX_S:
        problems.append(f"interval start {model.interval.start} / duration "
                        f"{model.interval.duration} s out of range")
    if creation is None:
        problems.append(f"creationTime {model.creationTime} out of range")
    if status_time is None:
        problems.append(f"EventStatus.dateTime {status.dateTime} out of range")
    return Control(
        mrid=model.mRID, creation_time=creation or _UNIX_EPOCH, start=start or _UNIX_EPOCH,
        duration_s=model.interval.duration, values=values, status=status.currentStatus,
        status_time=status_time, randomize_start_s=model.randomizeStart or 0,
        randomize_duration_s=model.randomizeDuration or 0,
        response_required=int(model.responseRequired, 16) if model.responseRequired else 0,
        reply_to=model.replyTo, href=model.href, version=model.version or 0,
        device_category=int(model.deviceCategory, 16) if model.deviceCategory else None,
        invalid_reason="; ".join(problems) or None, ignored=tuple(ignored))


def default_from_model(model: DefaultDERControl) -> DefaultControl:
    """A :class:`DefaultControl` from envoy-schema's DefaultDERControl."""
    values, problems, _ignored = values_from_base(model.DERControlBase_)
    return DefaultControl(values=values, href=model.href, mrid=model.mRID,
                          invalid_reason="; ".join(problems) or None)


def program_from_models(program: DERProgramResponse, controls: Iterable[DERControlResponse],
                        default: DefaultDERControl | None = None) -> Program:
    """A :class:`Program` from a DERProgram, its DERControlList items and DefaultDERControl."""
    return Program(program_id=program.href or program.mRID, primacy=program.primacy,
                   controls=tuple(control_from_model(item) for item in controls),
                   default=None if default is None else default_from_model(default),
                   description=program.description or "")


def _watts(power: ActivePower) -> float | None:
    if not -9 <= power.multiplier <= 9:
        return None
    return float(power.value * 10 ** power.multiplier) if power.multiplier >= 0 \
        else power.value / 10 ** -power.multiplier


def _from_unix(seconds: int) -> datetime | None:
    if not 0 <= seconds <= _MAX_UNIX_S:
        return None
    return _UNIX_EPOCH + timedelta(seconds=seconds)


# -- outputs ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Piece:
    """The value in force for one quantity over ``[start, end)``, and where it comes from."""

    quantity: Quantity
    start: datetime
    end: datetime
    value: Value
    program_id: str
    primacy: int
    default: bool  # True: from the program's DefaultDERControl
    mrid: str | None
    href: str | None
    program_description: str = ""

    def describe(self) -> str:
        """Provenance for an operator: which resource of which program, and the value."""
        program = f"DERProgram {self.program_id}"
        if self.program_description:
            program += f" {self.program_description!r}"
        program += f" (primacy {self.primacy})"
        if self.default:
            origin = (f"DefaultDERControl {self.href or self.mrid} of {program}, "
                      f"no DERControl active")
        else:
            origin = f"DERControl {self.mrid}"
            if self.href:
                origin += f" ({self.href})"
            origin += f" of {program}"
        return f"{origin}: {self.quantity.value} {_show(self.value, self.quantity)}"


@dataclass(frozen=True, slots=True)
class OwedResponse:
    """A Response the client owes the server for one DERControl."""

    subject: str  # the DERControl mRID
    status: ResponseStatus
    reply_to: str | None  # where to POST it (None: the server gave no replyTo)
    program_id: str
    reason: str

    def to_model(self, end_device_lfdi: str, created: datetime) -> DERControlReply:
        """The envoy-schema ``DERControlResponse`` to serialise and POST to ``reply_to``."""
        created = require_utc(created, "created")
        return DERControlReply(createdDateTime=int(created.timestamp()),
                               endDeviceLFDI=end_device_lfdi, status=ResponseType(self.status),
                               subject=self.subject)


@dataclass(frozen=True)
class ResponseLog:
    """What the client already did: Responses sent and when each event was first seen."""

    sent: frozenset[tuple[str, int]] = frozenset()
    first_seen: Mapping[str, datetime] = field(default_factory=dict)

    def with_sent(self, *responses: OwedResponse) -> ResponseLog:
        """This log with ``responses`` recorded as sent (call after a successful POST)."""
        sent = self.sent | {(response.subject, int(response.status)) for response in responses}
        return ResponseLog(frozenset(sent), dict(self.first_seen))

    def was_sent(self, subject: str, status: int) -> bool:
        return (subject, int(status)) in self.sent

    def pruned(self, keep: Collection[str]) -> ResponseLog:
        """Forget every event not in ``keep`` (the mRIDs the server still lists)."""
        return ResponseLog(frozenset(item for item in self.sent if item[0] in keep),
                           {mrid: at for mrid, at in self.first_seen.items() if mrid in keep})


@dataclass(frozen=True)
class Evaluation:
    """The engine's answer at ``start`` (server time) over ``[start, end)``."""

    start: datetime
    end: datetime
    pieces: tuple[Piece, ...]
    responses: tuple[OwedResponse, ...]
    log: ResponseLog  # the input log plus first sightings; record sends with ``with_sent``
    problems: tuple[str, ...]

    def timeline(self, quantity: Quantity) -> tuple[Piece, ...]:
        return tuple(piece for piece in self.pieces if piece.quantity is quantity)

    def piece_at(self, quantity: Quantity, moment: datetime) -> Piece | None:
        moment = require_utc(moment, "moment")
        for piece in self.timeline(quantity):
            if piece.start <= moment < piece.end:
                return piece
        return None

    def value_at(self, quantity: Quantity, moment: datetime) -> Value | None:
        piece = self.piece_at(quantity, moment)
        return None if piece is None else piece.value


# -- the engine ---------------------------------------------------------------------------

class _Outcome(StrEnum):
    RUNS = "runs"
    INVALID = "invalid"
    NOT_APPLICABLE = "not applicable"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


@dataclass(slots=True)
class _Event:
    control: Control
    program: Program
    values: dict[Quantity, Value]
    outcome: _Outcome
    reason: str = ""
    window: tuple[datetime, datetime] | None = None  # effective (randomised) window
    run: tuple[datetime, datetime] | None = None  # when it is in force
    superseded_at: datetime | None = None  # client-side supersession by a newer event

    @property
    def newness(self) -> tuple[datetime, int, datetime, str, str]:
        control = self.control
        return (control.creation_time, control.version, control.start, control.mrid,
                self.program.program_id)


def evaluate(programs: Sequence[Program], now: datetime, horizon: timedelta, *,
             seed: str | int, log: ResponseLog | None = None,
             supported: Collection[Quantity] = frozenset(Quantity),
             device_category: int | None = None) -> Evaluation:
    """The timeline over ``[now, now + horizon)``, the Responses owed, and the problems seen.

    ``supported`` are the quantities the site can execute (see :meth:`SiteNodes.supported`):
    the others are left out of the timeline, and an event with none of them is answered
    252.  ``device_category`` (the EndDevice's bitmap) skips events aimed at other devices.
    """
    now = require_utc(now, "now")
    if horizon <= timedelta(0):
        raise ValueError(f"horizon: must be positive, got {horizon}")
    end = now + horizon
    log = log or ResponseLog()
    supported = frozenset(supported)
    problems: list[str] = []
    events: list[_Event] = []
    programs = _unique_programs(programs, problems)
    chosen = _unique_controls(programs, problems)
    for program in programs:
        program_events = []
        for control in chosen.get(program.program_id, []):
            if (device_category is not None and control.device_category is not None
                    and not control.device_category & device_category):
                continue  # aimed at other device categories: not ours, no response
            event = _classify(control, program, seed, supported)
            if event.outcome is _Outcome.INVALID:
                problems.append(f"DERControl {control.mrid} of {program.program_id} is invalid: "
                                f"{event.reason}")
            for mode in control.ignored:
                problems.append(f"DERControl {control.mrid} of {program.program_id}: {mode} "
                                f"is not executed by gridflex (ignored)")
            program_events.append(event)
        _supersede(program_events)
        events.extend(program_events)
    defaults = _defaults(programs, supported, problems)
    pieces = _timeline(events, defaults, now, end, supported)
    responses = [response for event in events for response in _owed(event, now, log)]
    first_seen = dict(log.first_seen)
    for event in events:
        first_seen.setdefault(event.control.mrid, now)
    return Evaluation(now, end, tuple(pieces), tuple(responses),
                      ResponseLog(log.sent, first_seen), tuple(problems))


def _unique_programs(programs: Sequence[Program], problems: list[str]) -> list[Program]:
    """One program per id (the same program reached through two lists counts once)."""
    chosen: dict[str, Program] = {}
    for program in programs:
        kept = chosen.get(program.program_id)
        if kept is None:
            chosen[program.program_id] = program
        elif kept != program:
            problems.append(f"DERProgram {program.program_id} given twice with different "
                            f"content; the first is used")
    return list(chosen.values())


def _unique_controls(programs: Sequence[Program],
                     problems: list[str]) -> dict[str, list[Control]]:
    """One control per mRID across all programs (a reused mRID keeps its newest version),
    grouped by program id; the repeats are noted."""
    chosen: dict[str, tuple[Program, Control]] = {}
    for program in programs:
        for control in program.controls:
            kept = chosen.get(control.mrid)
            if kept is not None:
                problems.append(f"DERControl mRID {control.mrid} appears more than once "
                                f"({kept[0].program_id}, {program.program_id}); the newest "
                                f"version is used")
                if (control.version, control.creation_time) <= (kept[1].version,
                                                                 kept[1].creation_time):
                    continue
            chosen[control.mrid] = (program, control)
    grouped: dict[str, list[Control]] = {}
    for program, control in chosen.values():
        grouped.setdefault(program.program_id, []).append(control)
    return grouped


def _invalid(control: Control) -> str | None:
    if control.invalid_reason:
        return control.invalid_reason
    if control.status not in tuple(EventStatus):
        return f"EventStatus.currentStatus {control.status} is not 0..4"
    if control.duration_s < 0:
        return f"interval duration {control.duration_s} s is negative"
    for name, bound_s in (("randomizeStart", control.randomize_start_s),
                          ("randomizeDuration", control.randomize_duration_s)):
        if abs(bound_s) > MAX_RANDOMIZE_S:
            return f"{name} {bound_s} s is outside -3600..3600"
    for quantity, value in control.values.items():
        problem = _value_problem(quantity, value)
        if problem:
            return problem
    return None


def _value_problem(quantity: Quantity, value: Value) -> str | None:
    if quantity in WATT_QUANTITIES and (isinstance(value, bool) or value < 0):
        return f"{quantity.value} {value} must be a non-negative number of W"
    if quantity is Quantity.FIXED_W and (isinstance(value, bool)
                                         or abs(value) > MAX_FIXED_W_HUNDREDTHS / 100):
        return f"{quantity.value} {value} % is outside -100..100 %"
    if quantity in (Quantity.CONNECT, Quantity.ENERGIZE) and not isinstance(value, bool):
        return f"{quantity.value} {value!r} must be true or false"
    return None


def _classify(control: Control, program: Program, seed: str | int,
              supported: frozenset[Quantity]) -> _Event:
    """Validity, effective window and run of one event, before supersession."""
    reason = _invalid(control)
    window: tuple[datetime, datetime] | None = None
    if reason is None:
        try:
            window = _window(control, seed)
        except OverflowError:
            reason = "interval out of range"
    if reason is not None or window is None:
        return _Event(control, program, {}, _Outcome.INVALID, reason or "no window")
    values = {quantity: value for quantity, value in control.values.items()
              if quantity in supported}
    if not values:
        present = ", ".join([quantity.value for quantity in control.values] + list(control.ignored))
        return _Event(control, program, {}, _Outcome.NOT_APPLICABLE,
                      f"no control gridflex executes for this site ({present or 'empty'})",
                      window)
    status = control.status
    if status == EventStatus.CANCELLED:
        return _Event(control, program, values, _Outcome.CANCELLED, "cancelled", window)
    if status == EventStatus.SUPERSEDED:
        return _Event(control, program, values, _Outcome.SUPERSEDED, "superseded by the server",
                      window)
    if status == EventStatus.CANCELLED_RANDOMIZED:
        cancelled_at = control.status_time or control.creation_time
        bound_s = max(abs(control.randomize_start_s), abs(control.randomize_duration_s))
        delay = timedelta(seconds=_draw_s(seed, control.mrid, "cancel", bound_s))
        stop = cancelled_at + delay if cancelled_at <= datetime.max.replace(tzinfo=UTC) - delay \
            else cancelled_at
        run = (window[0], min(window[1], stop)) if window[0] <= cancelled_at else None
        return _Event(control, program, values, _Outcome.CANCELLED,
                      "cancelled with randomisation", window, run)
    return _Event(control, program, values, _Outcome.RUNS, "", window, window)


def _window(control: Control, seed: str | int) -> tuple[datetime, datetime]:
    """The effective window: start and duration shifted by their deterministic draws."""
    shift_s = _draw_s(seed, control.mrid, "start", control.randomize_start_s)
    stretch_s = _draw_s(seed, control.mrid, "duration", control.randomize_duration_s)
    start = control.start + timedelta(seconds=shift_s)
    return start, start + timedelta(seconds=max(0, control.duration_s + stretch_s))


def _draw_s(seed: str | int, mrid: str, label: str, bound_s: int) -> int:
    """A uniform whole number of seconds between 0 and ``bound_s`` (either sign), from a hash.

    The same seed, event and purpose always give the same draw, so re-polls agree.
    """
    if bound_s == 0:
        return 0
    digest = hashlib.sha256(f"{seed}\x1f{mrid}\x1f{label}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") % (abs(bound_s) + 1)
    return draw if bound_s > 0 else -draw


def _supersede(events: list[_Event]) -> None:
    """Within one program: a newer overlapping event with at least the same controls ends the
    older one at the newer one's start (2030.5: the superseded event stops, the new one runs).

    Overlap is judged on the events' own windows, so the result does not depend on order.  A
    sweep by start time finds every overlapping pair; the first newer event met is the one
    that cuts an older event earliest.
    """
    items = sorted(((event.window[0], event.window[1], event.newness, frozenset(event.values),
                     event) for event in events
                    if event.outcome is _Outcome.RUNS and event.window is not None
                    and event.window[0] < event.window[1]), key=lambda item: item[0])
    cuts: dict[int, tuple[datetime, str]] = {}
    open_items: list[tuple[datetime, datetime, tuple[datetime, int, datetime, str, str],
                           frozenset[Quantity], _Event]] = []
    for item in items:
        start, _, newness, values, event = item
        open_items = [other for other in open_items if other[1] > start]
        for other in open_items:  # in force at ``start``: they overlap, other started first
            if newness > other[2] and values >= other[3] and id(other[4]) not in cuts:
                cuts[id(other[4])] = (start, event.control.mrid)
            elif other[2] > newness and other[3] >= values and id(event) not in cuts:
                cuts[id(event)] = (start, other[4].control.mrid)
        open_items.append(item)
    for start, _, _, _, event in items:
        found = cuts.get(id(event))
        if found is not None:
            cut, by = found
            event.superseded_at = cut
            event.reason = f"superseded by DERControl {by}"
            event.run = (start, cut) if cut > start else None


@dataclass(frozen=True, slots=True)
class _DefaultSource:
    program: Program
    default: DefaultControl
    values: dict[Quantity, Value]


def _defaults(programs: Sequence[Program], supported: frozenset[Quantity],
              problems: list[str]) -> list[_DefaultSource]:
    """Usable defaults, best primacy first; bad values are dropped and reported."""
    found: list[_DefaultSource] = []
    for program in sorted(programs, key=lambda item: (item.primacy, item.program_id)):
        default = program.default
        if default is None:
            continue
        if default.invalid_reason:
            problems.append(f"DefaultDERControl of {program.program_id} is invalid: "
                            f"{default.invalid_reason}")
            continue
        values: dict[Quantity, Value] = {}
        for quantity, value in default.values.items():
            problem = _value_problem(quantity, value)
            if problem:
                problems.append(f"DefaultDERControl of {program.program_id}: {problem} (ignored)")
            elif quantity in supported:
                values[quantity] = value
        if values:
            found.append(_DefaultSource(program, default, values))
    return found


def _timeline(events: Sequence[_Event], defaults: Sequence[_DefaultSource], start: datetime,
              end: datetime, supported: frozenset[Quantity]) -> list[Piece]:
    """The winning value per quantity on every stretch of ``[start, end)``, merged."""
    runs = sorted(((event, max(event.run[0], start), min(event.run[1], end))
                   for event in events if event.run is not None),
                  key=lambda item: item[1])
    runs = [(event, run_start, run_end) for event, run_start, run_end in runs
            if run_start < run_end]
    cuts = sorted({start, end} | {moment for _, run_start, run_end in runs
                                  for moment in (run_start, run_end)})
    quantities = [quantity for quantity in Quantity if quantity in supported]
    by_quantity: dict[Quantity, list[Piece]] = {quantity: [] for quantity in quantities}
    active: list[tuple[_Event, datetime, datetime]] = []
    next_run = 0
    for slot_start, slot_end in pairwise(cuts):
        while next_run < len(runs) and runs[next_run][1] <= slot_start:
            active.append(runs[next_run])
            next_run += 1
        active = [run for run in active if run[2] > slot_start]  # runs end on a cut
        in_force = [event for event, _, _ in active]
        for quantity in quantities:
            piece = _winner(quantity, slot_start, slot_end, in_force, defaults)
            pieces = by_quantity[quantity]
            if piece is None:
                continue
            if pieces and _same_source(pieces[-1], piece) and pieces[-1].end == piece.start:
                pieces[-1] = _extended(pieces[-1], piece.end)
            else:
                pieces.append(piece)
    return [piece for quantity in quantities for piece in by_quantity[quantity]]


def _winner(quantity: Quantity, slot_start: datetime, slot_end: datetime,
            in_force: Sequence[_Event], defaults: Sequence[_DefaultSource]) -> Piece | None:
    candidates = [event for event in in_force if quantity in event.values]
    if candidates:
        best_primacy = min(event.program.primacy for event in candidates)
        best = max((event for event in candidates if event.program.primacy == best_primacy),
                   key=lambda event: event.newness)
        return Piece(quantity, slot_start, slot_end, best.values[quantity],
                     best.program.program_id, best.program.primacy, False, best.control.mrid,
                     best.control.href, best.program.description)
    for source in defaults:
        if quantity in source.values:
            return Piece(quantity, slot_start, slot_end, source.values[quantity],
                         source.program.program_id, source.program.primacy, True,
                         source.default.mrid, source.default.href, source.program.description)
    return None


def _same_source(left: Piece, right: Piece) -> bool:
    return (left.value == right.value and left.program_id == right.program_id
            and left.default == right.default and left.mrid == right.mrid)


def _extended(piece: Piece, end: datetime) -> Piece:
    return Piece(piece.quantity, piece.start, end, piece.value, piece.program_id, piece.primacy,
                 piece.default, piece.mrid, piece.href, piece.program_description)


def _owed(event: _Event, now: datetime, log: ResponseLog) -> list[OwedResponse]:
    """The Responses this event is owed at ``now`` that the log has not seen sent."""
    control = event.control
    required = control.response_required
    if not required & (RESPONSE_RECEIVED_BIT | RESPONSE_SPECIFIC_BIT):
        return []
    if any(log.was_sent(control.mrid, status) for status in TERMINAL_STATUSES):
        return []  # the event's story is told
    first_seen = log.first_seen.get(control.mrid, now)
    due: list[tuple[ResponseStatus, str]] = []
    if event.outcome is _Outcome.INVALID:
        due.append((ResponseStatus.INVALID, event.reason))
    elif event.outcome is _Outcome.NOT_APPLICABLE:
        due.append((ResponseStatus.NOT_APPLICABLE, event.reason))
    elif event.window is not None and first_seen >= event.window[1]:
        due.append((ResponseStatus.RECEIVED_LATE, "first seen after the event had ended"))
    else:
        if required & RESPONSE_RECEIVED_BIT:
            due.append((ResponseStatus.RECEIVED, "received"))
        if required & RESPONSE_SPECIFIC_BIT:
            due.extend(_progress(event, now))
    return [OwedResponse(control.mrid, status, control.reply_to, event.program.program_id,
                         reason)
            for status, reason in due if not log.was_sent(control.mrid, status)]


def _progress(event: _Event, now: datetime) -> list[tuple[ResponseStatus, str]]:
    """Started / completed / cancelled / superseded, as far as the event has got at ``now``."""
    if event.outcome is _Outcome.CANCELLED:
        return [(ResponseStatus.CANCELLED, event.reason)]
    if event.outcome is _Outcome.SUPERSEDED:
        return [(ResponseStatus.SUPERSEDED, event.reason)]
    due: list[tuple[ResponseStatus, str]] = []
    run = event.run
    if run is not None and run[0] <= now:
        due.append((ResponseStatus.STARTED, f"started at {run[0].isoformat()}"))
    if event.superseded_at is not None:
        if now >= event.superseded_at:
            due.append((ResponseStatus.SUPERSEDED, event.reason))
    elif run is not None and now >= run[1]:
        due.append((ResponseStatus.COMPLETED, f"completed at {run[1].isoformat()}"))
    return due


# -- translation into grid constraints ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SiteNodes:
    """Where one site's (EndDevice's) controls land in gridflex's grid tree.

    ``site`` is the site node (the connection point: opModImpLimW / opModExpLimW); ``evses``
    are its EVSE ids (each one a DER: opModLoadLimW / opModGenLimW / connect / energize).
    ``opModFixedW`` is a percentage of the site DER's charge rating (negative values) or
    discharge rating (positive values); without both ratings it is not executed.
    """

    site: str
    evses: tuple[str, ...] = ()
    fixed_w_charge_basis_kw: float | None = None
    fixed_w_discharge_basis_kw: float | None = None

    def supported(self) -> frozenset[Quantity]:
        """The quantities this mapping can turn into constraints (pass to :func:`evaluate`)."""
        found = {Quantity.IMPORT_LIMIT, Quantity.EXPORT_LIMIT}
        if self.evses:
            found |= {Quantity.LOAD_LIMIT, Quantity.GENERATION_LIMIT, Quantity.CONNECT,
                      Quantity.ENERGIZE}
        if self.fixed_w_charge_basis_kw is not None and self.fixed_w_discharge_basis_kw is not None:
            found.add(Quantity.FIXED_W)
        return frozenset(found)


def scope_for(nodes: SiteNodes) -> str:
    """The constraint-book scope of one site: everything it said is replaced at once."""
    return f"site:{nodes.site}"


def to_constraints(evaluation: Evaluation, nodes: SiteNodes, *, received_at: datetime,
                   priority: int = 0) -> list[GridConstraint]:
    """One ``GridConstraint`` per piece and node, kW, with provenance in ``source_ref``."""
    received_at = require_utc(received_at, "received_at")
    supported = nodes.supported()
    constraints: list[GridConstraint] = []
    for piece in evaluation.pieces:
        if piece.quantity not in supported:
            raise ValueError(f"{piece.quantity.value}: site {nodes.site!r} has no node mapping "
                             f"for it (evaluate with supported=nodes.supported())")
        for limit in _limits(piece, nodes):
            constraints.append(GridConstraint(
                node_id=limit.node_id, start=piece.start, end=piece.end, source=SOURCE,
                source_ref=f"{piece.describe()} -> {limit.what}", received_at=received_at,
                import_max_kw=limit.import_max_kw, export_max_kw=limit.export_max_kw,
                setpoint_kw=limit.setpoint_kw, priority=priority))
    return constraints


def publish(sink: ConstraintSink, nodes: SiteNodes, constraints: Sequence[GridConstraint],
            at: datetime) -> None:
    """Replace everything this site said in the book with ``constraints``."""
    sink.publish(SOURCE, scope_for(nodes), constraints, at)


class _Limit(NamedTuple):
    node_id: str
    what: str
    import_max_kw: float | None = None
    export_max_kw: float | None = None
    setpoint_kw: float | None = None


def _limits(piece: Piece, nodes: SiteNodes) -> list[_Limit]:
    """The node limits one piece stands for."""
    quantity, value = piece.quantity, piece.value
    if quantity in (Quantity.CONNECT, Quantity.ENERGIZE):
        if value:
            return []  # connected / energised: no limit
        return [_Limit(evse, f"EVSE {evse} import and export 0 kW", 0.0, 0.0)
                for evse in nodes.evses]
    if quantity is Quantity.FIXED_W:
        percent = float(value)
        basis = nodes.fixed_w_discharge_basis_kw if percent > 0 else nodes.fixed_w_charge_basis_kw
        setpoint_kw = -percent / 100.0 * float(basis or 0.0)
        return [_Limit(nodes.site, f"site {nodes.site} setpoint {setpoint_kw:g} kW",
                       setpoint_kw=setpoint_kw)]
    limit_kw = float(value) / 1000.0
    if quantity is Quantity.IMPORT_LIMIT:
        return [_Limit(nodes.site, f"site {nodes.site} import cap", import_max_kw=limit_kw)]
    if quantity is Quantity.EXPORT_LIMIT:
        return [_Limit(nodes.site, f"site {nodes.site} export cap", export_max_kw=limit_kw)]
    if quantity is Quantity.LOAD_LIMIT:
        return [_Limit(evse, f"EVSE {evse} import cap", import_max_kw=limit_kw)
                for evse in nodes.evses]
    return [_Limit(evse, f"EVSE {evse} export cap", export_max_kw=limit_kw)
            for evse in nodes.evses]


def _show(value: Value, quantity: Quantity) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g} {quantity.unit}"
