"""Pure decoding and validation of IEC 61850 values into grid constraints (no I/O).

Raw values arrive as the ``iec61850`` client hands them over: ``float``/``int``/``str``
scalars, ``bytes`` for quality (MMS bit string, bit 0 = most significant bit of byte 0)
and for UtcTime (8 bytes: seconds, 24-bit fraction, time-quality byte).  Every rejection
raises :class:`ValueRejectedError` naming the object reference and the reason.

Schedules (IEC 61850-7-4 FSCH, 90-10 semantics): only *Running* schedules count; where
running schedules overlap the higher ``SchdPrio`` wins; equal priorities go to the
schedule ``FSCC.ActSchdRef`` names, else to the lowest value (the safe side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pandas as pd

from adapters.iec61850.config import IedConfig, LimitConfig, Ref, ScheduleConfig
from aggregator.model import GridConstraint, Schedule

SOURCE = "iec61850"

VALIDITY = ("good", "reserved", "invalid", "questionable")
QUALITY_FLAGS = ((2, "overflow"), (3, "out_of_range"), (4, "bad_reference"),
                 (5, "oscillatory"), (6, "failure"), (7, "old_data"), (8, "inconsistent"),
                 (9, "inaccurate"), (10, "substituted"), (11, "test"),
                 (12, "operator_blocked"))
SCHEDULE_STATES = {1: "not-ready", 2: "start-time-required", 3: "ready", 4: "running"}
RUNNING = 4
MAX_SCHEDULE_S = 400 * 86400.0  # longer than any DSO plan: a unit or value error
CLOCK_FAILURE = 0x40
CLOCK_NOT_SYNCHRONIZED = 0x20


class ValueRejectedError(ValueError):
    """A value read from an IED cannot be used; ``ref`` names the object reference."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason


# -- primitives ---------------------------------------------------------------------------
def quality_bits(raw: Any, ref: str) -> int:
    """The 13-bit quality as an integer (bit i of the MMS bit string = ``1 << i``)."""
    if isinstance(raw, bool):
        raise ValueRejectedError(ref, f"quality must be a bit string, got {raw!r}")
    if isinstance(raw, int):
        if not 0 <= raw < 1 << 16:
            raise ValueRejectedError(ref, f"quality {raw} out of range")
        return raw
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 2:
        raise ValueRejectedError(ref, f"quality must be a 2-byte bit string, got {raw!r}")
    return sum(1 << i for i in range(13) if raw[i // 8] & (0x80 >> (i % 8)))


def describe_quality(bits: int) -> str:
    """``"good"`` or e.g. ``"invalid+old_data"``."""
    names = [name for bit, name in QUALITY_FLAGS if bits & (1 << bit)]
    validity = VALIDITY[bits & 0b11]
    return "+".join([validity, *names]) if validity != "good" or names else "good"


def check_quality(raw: Any, ref: str) -> str:
    """Return ``"good"``; anything else (invalid, questionable, test, substituted, ...) raises."""
    text = describe_quality(quality_bits(raw, ref))
    if text != "good":
        raise ValueRejectedError(ref, f"quality not good ({text})")
    return text


def decode_timestamp(raw: Any, ref: str, *, accept_unsynchronized: bool = False) -> datetime:
    """An MMS UtcTime (8 bytes) as a UTC datetime; clock failure (and unsync) raise."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 8:
        raise ValueRejectedError(ref, f"timestamp must be 8 bytes of UtcTime, got {raw!r}")
    seconds = int.from_bytes(raw[0:4], "big")
    fraction = int.from_bytes(raw[4:7], "big")
    flags = raw[7]
    if flags & CLOCK_FAILURE:
        raise ValueRejectedError(ref, "timestamp flags clock failure")
    if flags & CLOCK_NOT_SYNCHRONIZED and not accept_unsynchronized:
        raise ValueRejectedError(ref, "timestamp flags clock not synchronized")
    if seconds == 0 and fraction == 0:
        raise ValueRejectedError(ref, "timestamp not set (1970-01-01T00:00:00Z)")
    micros = fraction * 1_000_000 // (1 << 24)
    return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=micros)


def check_fresh(stamp: datetime, now: datetime, max_age_s: float, max_future_s: float,
                ref: str) -> datetime:
    """Reject a timestamp older than ``max_age_s`` or more than ``max_future_s`` ahead."""
    age_s = (now - stamp).total_seconds()
    if age_s > max_age_s:
        raise ValueRejectedError(ref, f"stale: timestamp {stamp.isoformat()} is {age_s:.0f} s old "
                                 f"(max {max_age_s:g} s)")
    if -age_s > max_future_s:
        raise ValueRejectedError(ref, f"timestamp {stamp.isoformat()} is {-age_s:.0f} s in the "
                                 f"future (max {max_future_s:g} s)")
    return stamp


def number(raw: Any, ref: str) -> float:
    """A finite float from an MMS integer or float."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueRejectedError(ref, f"expected a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueRejectedError(ref, f"not a finite number ({value})")
    return value


def integer(raw: Any, ref: str) -> int:
    """An MMS integer (a float or bool is a type error)."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueRejectedError(ref, f"expected an integer, got {raw!r}")
    return raw


def power_kw(raw: Any, multiplier: int, ref: str, max_kw: float) -> float:
    """A power in W x 10^``multiplier`` as kW, within ``[0, max_kw]``."""
    value = number(raw, ref)
    kw = value * 10.0 ** multiplier / 1000.0
    if not math.isfinite(kw):
        raise ValueRejectedError(ref, f"{value:g} x10^{multiplier} W overflows")
    if kw < 0:
        raise ValueRejectedError(ref, f"negative power {value:g} x10^{multiplier} W")
    if kw > max_kw:
        raise ValueRejectedError(ref, f"{kw:g} kW exceeds the configured maximum {max_kw:g} kW")
    return kw


def encode_power(kw: float, multiplier: int, ref: str, max_kw: float) -> float:
    """kW -> the IED's unit (W x 10^``multiplier``) for a write; negative or NaN raises."""
    value = number(kw, ref)
    if value < 0:
        raise ValueRejectedError(ref, f"90-8 models charging only; cannot write {value:g} kW")
    if value > max_kw:
        raise ValueRejectedError(ref, f"{value:g} kW exceeds the configured maximum {max_kw:g} kW")
    return value * 1000.0 / 10.0 ** multiplier


# -- DESE.ChaPwrLim -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LimitReading:
    """A validated ChaPwrLim value with its provenance."""

    ref: str
    raw_value: float
    kw: float
    quality: str
    timestamp: datetime | None


def decode_limit(values: Mapping[Ref, Any], cfg: LimitConfig, ied: IedConfig,
                 now: datetime) -> LimitReading:
    """Check value, quality and timestamp of a ChaPwrLim read or report."""
    ref = cfg.value.full(ied.domain)
    if cfg.value not in values:
        raise ValueRejectedError(ref, "missing from the read")
    quality = "unchecked"
    if cfg.quality is not None:
        quality = check_quality(values.get(cfg.quality), cfg.quality.full(ied.domain))
    stamp = None
    if cfg.time is not None:
        time_ref = cfg.time.full(ied.domain)
        stamp = check_fresh(decode_timestamp(values.get(cfg.time), time_ref,
                                             accept_unsynchronized=ied.accept_unsynchronized_clock),
                            now, ied.max_age_s, ied.max_future_s, time_ref)
    raw = number(values[cfg.value], ref)
    kw = power_kw(raw, cfg.multiplier, ref, ied.max_power_kw)
    return LimitReading(ref, raw, kw, quality, stamp)


def limit_constraint(reading: LimitReading, ied: IedConfig, node_id: str,
                     received_at: datetime) -> GridConstraint:
    """The cap in force from now until the TTL runs out (renewed by every refresh)."""
    until = received_at + timedelta(seconds=ied.ttl_s)
    stamp = reading.timestamp.isoformat() if reading.timestamp else "none"
    return GridConstraint(
        node_id=node_id, start=received_at, end=until, source=SOURCE,
        source_ref=(f"{ied.name} {reading.ref} = {reading.raw_value:g} "
                    f"({reading.kw:g} kW) q={reading.quality} t={stamp}"),
        received_at=received_at, import_max_kw=reading.kw, expires_at=until)


# -- FSCH / FSCC ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScheduleHeader:
    """The FSCH attributes read before its values."""

    name: str
    state: int
    priority: int
    entries: int
    interval_s: float
    start: datetime | None
    quality: str

    @property
    def running(self) -> bool:
        return self.state == RUNNING


@dataclass(frozen=True, slots=True)
class ScheduleReading:
    """A running schedule with its entries in kW."""

    header: ScheduleHeader
    values_kw: tuple[float, ...]

    def windows(self) -> list[tuple[datetime, datetime, float, int]]:
        """(start, end, kW, entry number) per entry."""
        assert self.header.start is not None
        step = timedelta(seconds=self.header.interval_s)
        return [(self.header.start + i * step, self.header.start + (i + 1) * step, kw, i + 1)
                for i, kw in enumerate(self.values_kw)]


def decode_schedule_header(values: Mapping[Ref, Any], cfg: ScheduleConfig,
                           ied: IedConfig) -> ScheduleHeader:
    """Check SchdSt (enum, quality), SchdPrio, NumEntr, SchdIntv and StrTm of one FSCH."""
    def raw(ref: Ref) -> Any:
        if ref not in values:
            raise ValueRejectedError(ref.full(ied.domain), "missing from the read")
        return values[ref]

    state_ref = cfg.state.full(ied.domain)
    quality = "unchecked"
    if cfg.state_quality is not None:
        quality = check_quality(raw(cfg.state_quality), cfg.state_quality.full(ied.domain))
    state = integer(raw(cfg.state), state_ref)
    if state not in SCHEDULE_STATES:
        raise ValueRejectedError(state_ref, f"unknown schedule state {state} (known: "
                            + ", ".join(f"{k}={v}" for k, v in SCHEDULE_STATES.items()) + ")")
    priority = integer(raw(cfg.priority), cfg.priority.full(ied.domain))
    if state != RUNNING:
        return ScheduleHeader(cfg.name, state, priority, 0, 0.0, None, quality)
    entries_ref = cfg.entries.full(ied.domain)
    entries = integer(raw(cfg.entries), entries_ref)
    if entries <= 0:
        raise ValueRejectedError(entries_ref, f"running schedule with {entries} entries")
    if entries > cfg.max_entries:
        raise ValueRejectedError(entries_ref, f"{entries} entries, at most {cfg.max_entries} "
                                         "configured")
    interval_ref = cfg.interval.full(ied.domain)
    interval = integer(raw(cfg.interval), interval_ref)
    if interval <= 0:
        raise ValueRejectedError(interval_ref, f"interval must be > 0, got {interval}")
    if entries * interval * cfg.interval_unit_s > MAX_SCHEDULE_S:
        raise ValueRejectedError(interval_ref, f"{entries} x {interval} intervals exceed "
                                               f"{MAX_SCHEDULE_S / 86400:g} days")
    start_ref = cfg.start.full(ied.domain)
    start = decode_timestamp(raw(cfg.start), start_ref,
                             accept_unsynchronized=ied.accept_unsynchronized_clock)
    return ScheduleHeader(cfg.name, state, priority, entries,
                          interval * cfg.interval_unit_s, start, quality)


def decode_schedule(header: ScheduleHeader, values: Mapping[Ref, Any], cfg: ScheduleConfig,
                    ied: IedConfig) -> ScheduleReading:
    """Check the ValASG entries of a running schedule (finite, 0..max kW)."""
    result = []
    for number_ in range(1, header.entries + 1):
        ref = cfg.value_ref(number_)
        full = ref.full(ied.domain)
        if ref not in values:
            raise ValueRejectedError(full, "missing from the read (dangling entry reference)")
        result.append(power_kw(values[ref], cfg.multiplier, full, ied.max_power_kw))
    return ScheduleReading(header, tuple(result))


def active_schedule_name(raw: Any, names: Sequence[str], ref: str) -> str | None:
    """The FSCH that ``FSCC.ActSchdRef`` names (``None`` if empty); unknown names raise."""
    if not isinstance(raw, str):
        raise ValueRejectedError(ref, f"expected an object reference string, got {raw!r}")
    text = raw.strip()
    if not text:
        return None
    tail = text.split("/")[-1].split(".")[0].split("$")[0]
    if tail not in names:
        raise ValueRejectedError(ref, f"dangling reference {text!r}: not one of the configured "
                                 f"schedules ({', '.join(names)})")
    return tail


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time where one schedule's value is in force."""

    start: datetime
    end: datetime
    kw: float
    schedule: str
    priority: int
    entries: tuple[int, ...]
    tied_with: tuple[str, ...] = ()
    chosen_by_active: bool = False


def resolve(readings: Sequence[ScheduleReading], active: str | None,
            now: datetime) -> list[Window]:
    """The envelope of the running schedules from ``now`` on (see the module rules)."""
    if active is not None and not any(r.header.name == active for r in readings):
        raise ValueRejectedError(f"FSCC.ActSchdRef={active}",
                                 "names a schedule that is not running")
    pieces = [(start, end, kw, r.header.name, r.header.priority, entry)
              for r in readings for start, end, kw, entry in r.windows() if end > now]
    bounds = sorted({t for p in pieces for t in (p[0], p[1])})
    windows: list[Window] = []
    for lo, hi in pairwise(bounds):
        covering = [p for p in pieces if p[0] <= lo and p[1] >= hi]
        if not covering:
            continue
        top = max(p[4] for p in covering)
        best = [p for p in covering if p[4] == top]
        chosen = next((p for p in best if p[3] == active), None) or min(
            best, key=lambda p: (p[2], p[3]))
        tied = tuple(sorted({p[3] for p in best} - {chosen[3]}))
        by_active = bool(tied) and chosen[3] == active
        last = windows[-1] if windows else None
        if last is not None and last.end == lo and last.schedule == chosen[3] and \
                last.kw == chosen[2] and last.tied_with == tied:
            entries = last.entries if chosen[5] in last.entries else (*last.entries, chosen[5])
            windows[-1] = Window(last.start, hi, last.kw, last.schedule, last.priority,
                                 entries, tied, by_active)
        else:
            windows.append(Window(lo, hi, chosen[2], chosen[3], chosen[4], (chosen[5],), tied,
                                  by_active))
    return windows


def schedule_constraints(windows: Sequence[Window], readings: Sequence[ScheduleReading],
                         ied: IedConfig, received_at: datetime) -> list[GridConstraint]:
    """One constraint per window, its provenance naming schedule, entries and state."""
    headers = {r.header.name: r.header for r in readings}
    expires = None if ied.schedule_ttl_s is None else \
        received_at + timedelta(seconds=ied.schedule_ttl_s)
    result = []
    for window in windows:
        header = headers[window.schedule]
        first, last = window.entries[0], window.entries[-1]
        entries = f"ValASG{first}" if first == last else f"ValASG{first}..{last}"
        rule = "ActSchdRef wins" if window.chosen_by_active else "lowest wins"
        tie = f"; tie with {', '.join(window.tied_with)} ({rule})" if window.tied_with else ""
        start = header.start.isoformat() if header.start else "none"
        result.append(GridConstraint(
            node_id=ied.node_id, start=window.start, end=window.end, source=SOURCE,
            source_ref=(f"{ied.name} {ied.domain}/{window.schedule}.{entries} = "
                        f"{window.kw:g} kW (SchdPrio {window.priority}, running, "
                        f"StrTm {start}, SchdIntv {header.interval_s:g} s, "
                        f"q={header.quality}{tie})"),
            received_at=received_at, import_max_kw=window.kw, priority=window.priority,
            expires_at=expires))
    return result


# -- publishing back ------------------------------------------------------------------------
def planned_power_kw(schedule: Schedule, evse_id: str, at: datetime) -> float:
    """gridflex's planned power for ``evse_id`` in the interval holding ``at`` (0 outside)."""
    frame = schedule.power_kw
    if evse_id not in frame.columns:
        raise ValueRejectedError(evse_id, "EVSE not in the schedule")
    index = schedule.intervals
    stamp = pd.Timestamp(at)
    position = int(index.searchsorted(stamp, side="right")) - 1
    if position < 0 or stamp >= index[position] + schedule.interval:
        return 0.0
    return float(frame[evse_id].iloc[position])
