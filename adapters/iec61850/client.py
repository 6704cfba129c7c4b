"""The MMS side of the 90-8 adapter: one task per IED on the ``iec61850`` (Rust) client.

Per IED: connect with a timeout, enable the configured report control blocks (reserve,
integrity period, trigger options, general interrogation), then read everything once.
A report (data change or integrity) is a notification: the objects its data set covers
are re-read in one MMS Read and published, so reports and polls share one decode path
and a schedule is always taken as one consistent snapshot.  Without working reports the
adapter polls; when reports fall silent for two integrity periods it polls and re-enables
them.  Sequence-number gaps and ConfRev changes are recorded and answered with a re-read
and a general interrogation.

Faults the ``iec61850`` 0.14 client forces on us (measured, see the tests):

- After a request times out the connection answers the *next* request with the late
  response to the old one (values shift by one).  Any timeout therefore drops the
  connection (``abort``) and reconnects; a connection is never reused after a timeout.
- ``install_report_handler`` dispatches by RptID only: without ``rpt_id`` reports are
  counted by ``poll_reports`` but never delivered.  The RptID is read from the RCB first.
- ``spawn_report_dispatcher`` swallows the error when the connection dies; our own
  dispatcher turns it into a link loss.  ``is_connected`` stays true after the peer died.
- It cannot write a UtcTime (every Python type gives TypeInconsistent), so the departure
  time is written as INT32 seconds since 1970 (the ``publish.departure`` reference).
- The process can abort or segfault at interpreter exit when a connection was dropped
  just before the event loop closed; ``close`` yields to the loop after aborting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import iec61850

from adapters.iec61850.config import AdapterConfig, IedConfig, Ref
from adapters.iec61850.values import (
    SCHEDULE_STATES,
    SOURCE,
    ScheduleHeader,
    ScheduleReading,
    ValueRejectedError,
    active_schedule_name,
    decode_limit,
    decode_schedule,
    decode_schedule_header,
    encode_power,
    limit_constraint,
    number,
    resolve,
    schedule_constraints,
)
from aggregator.constraints import ConstraintSink

log = logging.getLogger(__name__)

Group = Literal["limit", "schedules"]
ALL_GROUPS: frozenset[Group] = frozenset({"limit", "schedules"})
_CONNECTION_ERRORS = (iec61850.IedConnectionError, iec61850.IedTimeoutError,
                      iec61850.IedServiceError, TimeoutError, OSError)


def utc_now() -> datetime:
    """The wall clock in UTC."""
    return datetime.now(UTC)


class LinkDownError(Exception):
    """The connection to the IED is unusable (lost, timed out, refused)."""


class PublishError(Exception):
    """A write of EV state or power target failed; ``ref`` names the object."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fault:
    """Something the adapter rejected or survived, kept for operators and tests."""

    at: datetime
    ied: str
    kind: str  # "value", "sequence-gap", "reports", "link", "write", "confrev"
    ref: str
    reason: str


@dataclass
class Stats:
    """Counters per IED."""

    connects: int = 0
    reports: int = 0
    sequence_gaps: int = 0
    polls: int = 0
    publishes: int = 0
    withdrawals: int = 0
    rejected: int = 0


class LinkTracker:
    """One ``iec61850`` source over many IEDs: up only while every IED is up."""

    def __init__(self, sink: ConstraintSink, names: Iterable[str]) -> None:
        self._sink = sink
        self._down: dict[str, str] = {name: "no contact yet" for name in names}

    def up(self, name: str, at: datetime) -> None:
        self._down.pop(name, None)
        if not self._down:
            self._sink.link_up(SOURCE, at)

    def lost(self, name: str, at: datetime, reason: str) -> None:
        self._down[name] = reason
        self._sink.link_lost(SOURCE, at, f"{name}: {reason}")


@dataclass
class _Rcb:
    ref: str
    covers: frozenset[Group]
    rpt_id: str = ""
    modulus: int = 256
    last_seq: int | None = None
    conf_rev: int | None = None


@dataclass(frozen=True, slots=True)
class _Report:
    rcb: str
    seq: int | None
    conf_rev: int | None


@dataclass
class _State:
    rcbs: list[_Rcb] = field(default_factory=list)
    last_report_at: float = 0.0


class IedAdapter:
    """Reads one IED's limits and schedules into the sink; writes EV state back."""

    def __init__(self, ied: IedConfig, sink: ConstraintSink, *,
                 clock: Callable[[], datetime] = utc_now,
                 links: LinkTracker | None = None) -> None:
        self.ied = ied
        self.sink = sink
        self.clock = clock
        self.links = links or LinkTracker(sink, [ied.name])
        self.faults: deque[Fault] = deque(maxlen=200)
        self.stats = Stats()
        self.connected = asyncio.Event()
        self._conn: iec61850.IedConnection | None = None
        self._events: asyncio.Queue[_Report | Exception] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._state = _State()
        self._lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe, refresh and reconnect until ``stop``."""
        delay_s = self.ied.reconnect_min_s
        while not self._stopping.is_set():
            try:
                await self._connect()
            except LinkDownError as exc:
                self._lost(str(exc))
                await self._pause(delay_s)
                delay_s = min(delay_s * 2, self.ied.reconnect_max_s)
                continue
            delay_s = self.ied.reconnect_min_s
            try:
                await self._session()
            except LinkDownError as exc:
                self._lost(str(exc))
            except Exception as exc:  # a defect must not end the adapter: reconnect
                log.exception("iec61850 %s: unexpected error", self.ied.name)
                self._lost(f"unexpected {type(exc).__name__}: {exc}")
            finally:
                await self._drop()
            await self._pause(delay_s)

    async def stop(self) -> None:
        """End ``run`` and close the connection."""
        self._stopping.set()
        self._events.put_nowait(LinkDownError("stopping"))
        await self._drop(graceful=True)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _fault(self, kind: str, ref: str, reason: str) -> None:
        fault = Fault(self.clock(), self.ied.name, kind, ref, reason)
        self.faults.append(fault)
        log.warning("iec61850 %s %s %s: %s", self.ied.name, kind, ref, reason)

    def _lost(self, reason: str) -> None:
        self.connected.clear()
        self._fault("link", f"{self.ied.host}:{self.ied.port}", reason)
        self.links.lost(self.ied.name, self.clock(), reason)

    async def _connect(self) -> None:
        address = f"{self.ied.host}:{self.ied.port}"
        try:
            self._conn = await asyncio.wait_for(
                iec61850.IedConnection.connect(
                    address, timeout_ms=int(self.ied.connect_timeout_s * 1000),
                    request_timeout_ms=int(self.ied.request_timeout_s * 1000)),
                self.ied.connect_timeout_s + 1.0)
        except (*_CONNECTION_ERRORS, iec61850.IedError) as exc:
            raise LinkDownError(f"connect to {address} failed: {type(exc).__name__}: {exc}") \
                from exc
        self.stats.connects += 1
        self._events = asyncio.Queue()

    async def _drop(self, graceful: bool = False) -> None:
        """Stop the dispatcher and close the connection (abort unless graceful)."""
        self.connected.clear()
        task, self._dispatcher = self._dispatcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if graceful:
                await asyncio.wait_for(conn.disconnect(), self.ied.request_timeout_s)
            else:
                await asyncio.wait_for(conn.abort(), self.ied.request_timeout_s)
        except (*_CONNECTION_ERRORS, iec61850.IedError):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.abort(), self.ied.request_timeout_s)
        # iec61850 0.14 finishes its close in the background; let it run before the
        # loop may close (otherwise the interpreter can crash at exit)
        for _ in range(3):
            await asyncio.sleep(0)

    # -- the session -----------------------------------------------------------------------
    async def _session(self) -> None:
        await self._enable_reports()
        self.links.up(self.ied.name, self.clock())
        await self.refresh(ALL_GROUPS)
        self.connected.set()
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            reporting = bool(self._state.rcbs)
            wait_s = 2 * self.ied.integrity_period_s + self.ied.request_timeout_s \
                if reporting else self.ied.poll_interval_s
            try:
                event = await asyncio.wait_for(self._events.get(), wait_s)
            except TimeoutError:
                if reporting:
                    self._fault("reports", self.ied.name, f"no report for {wait_s:g} s; "
                                "polling and re-enabling reports")
                    await self._enable_reports()
                self.stats.polls += 1
                await self.refresh(ALL_GROUPS)
                continue
            if isinstance(event, Exception):
                raise event if isinstance(event, LinkDownError) else LinkDownError(str(event))
            self._state.last_report_at = loop.time()
            await self._on_report(event)

    async def _on_report(self, report: _Report) -> None:
        self.stats.reports += 1
        rcb = next((r for r in self._state.rcbs if r.ref == report.rcb), None)
        if rcb is None:
            return
        gi = False
        if report.seq is not None:
            if rcb.last_seq is not None and report.seq != (rcb.last_seq + 1) % rcb.modulus:
                self.stats.sequence_gaps += 1
                self._fault("sequence-gap", rcb.ref, f"SqNum {report.seq} after "
                                                     f"{rcb.last_seq}: reports lost")
                gi = True
            rcb.last_seq = report.seq
        if report.conf_rev is not None and rcb.conf_rev is not None and \
                report.conf_rev != rcb.conf_rev:
            self._fault("confrev", rcb.ref, f"ConfRev {report.conf_rev}, expected "
                                            f"{rcb.conf_rev}: data set changed")
            rcb.conf_rev = report.conf_rev
            gi = True
        await self.refresh(rcb.covers)
        if gi:
            await self._request(self._need().trigger_gi(self._full_rcb(rcb.ref)), rcb.ref)

    # -- reports ---------------------------------------------------------------------------
    def _full_rcb(self, rcb: str) -> str:
        return f"{self.ied.domain}/{rcb}"

    async def _enable_reports(self) -> None:
        """(Re-)enable every configured RCB; one that fails leaves its groups to polling."""
        conn = self._need()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            self._dispatcher = None
        self._state.rcbs = []
        loop = asyncio.get_running_loop()
        for cfg in self.ied.reports:
            ref = self._full_rcb(cfg.rcb)
            try:
                handle = await self._request(conn.get_rcb_values(ref), ref)
                if handle.rpt_ena:  # a stale enable of ours (or someone else's): restart
                    handle.rpt_ena = False
                    await self._request(conn.set_rcb_values(
                        handle, iec61850.RcbWriteMask.fields("rpt_ena")), ref)
                rpt_id = handle.rpt_id or ref
                rcb = _Rcb(cfg.rcb, _groups(cfg.covers), rpt_id,
                           65536 if handle.is_buffered else 256, None, handle.conf_rev)

                def deliver(report: iec61850.ClientReport, name: str = cfg.rcb) -> None:
                    item = _Report(name, report.sequence_number, report.conf_rev)
                    loop.call_soon_threadsafe(self._events.put_nowait, item)

                with contextlib.suppress(iec61850.IedError, ValueError):  # none installed
                    await conn.uninstall_report_handler(ref)
                await self._request(conn.install_report_handler(ref, deliver, rpt_id=rpt_id),
                                    ref)
                if not handle.is_buffered:
                    handle.resv = True
                handle.integrity_period_ms = int(self.ied.integrity_period_s * 1000)
                handle.trigger_options = iec61850.TriggerOptions(
                    data_change=True, quality_change=True, data_update=True, integrity=True,
                    general_interrogation=True)
                handle.opt_flds = iec61850.ReportOptFlds(
                    sequence_number=True, report_timestamp=True, reason_for_inclusion=True,
                    dataset_name=True, conf_rev=True)
                handle.rpt_ena = True
                fields = ["integrity_period", "trigger_options", "opt_flds", "rpt_ena"]
                if not handle.is_buffered:
                    fields.insert(0, "resv")
                await self._request(conn.set_rcb_values(
                    handle, iec61850.RcbWriteMask.fields(*fields)), ref)
                self._state.rcbs.append(rcb)
            except iec61850.IedDataAccessError as exc:
                self._fault("reports", ref, f"cannot enable ({exc}); polling instead")
        if self._state.rcbs:
            self._dispatcher = asyncio.create_task(self._dispatch(conn))
            for rcb in self._state.rcbs:
                with contextlib.suppress(iec61850.IedDataAccessError):
                    await self._request(conn.trigger_gi(self._full_rcb(rcb.ref)), rcb.ref)

    async def _dispatch(self, conn: iec61850.IedConnection) -> None:
        """Pull reports until the connection fails; a failure ends the session."""
        try:
            while True:
                await conn.poll_reports(100)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._events.put_nowait(LinkDownError(f"report channel failed: {exc}"))

    # -- reading ---------------------------------------------------------------------------
    def _need(self) -> iec61850.IedConnection:
        if self._conn is None:
            raise LinkDownError("not connected")
        return self._conn

    async def _request(self, request: Any, what: str) -> Any:
        """Await one MMS request under the per-request timeout; a timeout drops the link."""
        try:
            return await asyncio.wait_for(request, self.ied.request_timeout_s + 0.5)
        except iec61850.IedDataAccessError:
            raise
        except (*_CONNECTION_ERRORS, iec61850.IedError) as exc:
            raise LinkDownError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def _read(self, refs: Sequence[Ref],
                    optional: frozenset[Ref] = frozenset()) -> dict[Ref, Any]:
        """One MMS Read of ``refs``; a required object the server lacks raises."""
        unique = list(dict.fromkeys(refs))
        targets = [(ref.full(self.ied.domain), iec61850.FC(ref.fc)) for ref in unique]
        async with self._lock:
            values = await self._request(self._need().read_multiple(targets, strict=False),
                                         "read")
        result: dict[Ref, Any] = {}
        for ref, value in zip(unique, values, strict=True):
            if isinstance(value, iec61850.DataAccessFailure):
                if ref in optional:
                    continue
                raise ValueRejectedError(ref.full(self.ied.domain),
                                         f"read failed: {value.error} (dangling reference?)")
            result[ref] = value
        return result

    async def refresh(self, groups: Iterable[Group] = ALL_GROUPS) -> None:
        """Read and publish the given groups; a rejected value keeps the last constraint."""
        wanted = set(groups)
        if "limit" in wanted and self.ied.limit is not None:
            await self._guarded(self._refresh_limit)
        if "schedules" in wanted and self.ied.schedules:
            await self._guarded(self._refresh_schedules)

    async def _guarded(self, step: Callable[[], Any]) -> None:
        try:
            await step()
        except ValueRejectedError as exc:
            self.stats.rejected += 1
            self._fault("value", exc.ref, exc.reason)

    async def _refresh_limit(self) -> None:
        cfg = self.ied.limit
        assert cfg is not None
        refs = [r for r in (cfg.value, cfg.quality, cfg.time) if r is not None]
        raw = await self._read(refs)
        now = self.clock()
        reading = decode_limit(raw, cfg, self.ied, now)
        constraint = limit_constraint(reading, self.ied, cfg.node_id or self.ied.node_id, now)
        self.sink.publish(SOURCE, self.ied.scope_limit, [constraint], now)
        self.stats.publishes += 1

    async def _refresh_schedules(self) -> None:
        # one MMS Read for headers and every possible entry: a consistent snapshot (a
        # header read followed by a value read can straddle an update on the IED)
        refs: list[Ref] = []
        entries: list[Ref] = []
        for cfg in self.ied.schedules:
            refs += [cfg.state, cfg.priority, cfg.entries, cfg.interval, cfg.start]
            if cfg.state_quality is not None:
                refs.append(cfg.state_quality)
            entries += [cfg.value_ref(n) for n in range(1, cfg.max_entries + 1)]
        if self.ied.active_schedule is not None:
            refs.append(self.ied.active_schedule)
        raw = await self._read(refs + entries, optional=frozenset(entries))
        headers: list[tuple[ScheduleHeader, Any]] = [
            (decode_schedule_header(raw, cfg, self.ied), cfg) for cfg in self.ied.schedules]
        active = None
        if self.ied.active_schedule is not None:
            active = active_schedule_name(raw[self.ied.active_schedule],
                                          [cfg.name for cfg in self.ied.schedules],
                                          self.ied.active_schedule.full(self.ied.domain))
        running = [(h, cfg) for h, cfg in headers if h.running]
        now = self.clock()
        scope = self.ied.scope_schedules
        if not running:
            states = ", ".join(f"{h.name} {_state_name(h.state)}" for h, _ in headers)
            self._withdraw(scope, now, f"no running schedule ({states})")
            return
        readings: list[ScheduleReading] = [decode_schedule(h, raw, cfg, self.ied)
                                           for h, cfg in running]
        windows = resolve(readings, active, now)
        if not windows:
            self._withdraw(scope, now, "every running schedule has ended")
            return
        constraints = schedule_constraints(windows, readings, self.ied, now)
        self.sink.publish(SOURCE, scope, constraints, now)
        self.stats.publishes += 1

    def _withdraw(self, scope: str, now: datetime, reason: str) -> None:
        self.sink.withdraw(SOURCE, scope, now, f"{self.ied.name}: {reason}")
        self.stats.withdrawals += 1

    # -- writing back ----------------------------------------------------------------------
    async def publish_state(self, *, soc_pct: float | None = None,
                            departure: datetime | None = None,
                            energy_requested_kwh: float | None = None,
                            power_target_kw: float | None = None) -> None:
        """Write EV state (DEEV) and gridflex's planned power (DESE.ChaPwrTgt)."""
        cfg = self.ied.publish
        if cfg is None:
            raise PublishError(self.ied.name, "no publish references configured")
        writes: list[tuple[Ref, float | int]] = []
        if soc_pct is not None:
            ref = _configured(cfg.soc, "publish.soc")
            value = number(soc_pct, ref.full(self.ied.domain))
            if not 0.0 <= value <= 100.0:
                raise PublishError(ref.full(self.ied.domain), f"SoC {value:g} % not in 0..100")
            writes.append((ref, value))
        if departure is not None:
            ref = _configured(cfg.departure, "publish.departure")
            if departure.utcoffset() is None:
                raise PublishError(ref.full(self.ied.domain), "departure must be tz-aware UTC")
            seconds = int(departure.timestamp())
            if not 0 < seconds < 2**31:
                raise PublishError(ref.full(self.ied.domain), "departure outside INT32 epoch")
            writes.append((ref, seconds))
        if energy_requested_kwh is not None:
            ref = _configured(cfg.energy_requested, "publish.energy_requested")
            value = number(energy_requested_kwh, ref.full(self.ied.domain))
            if value < 0:
                raise PublishError(ref.full(self.ied.domain), f"negative energy {value:g} kWh")
            writes.append((ref, value * 1000.0))
        if power_target_kw is not None:
            ref = _configured(cfg.power_target, "publish.power_target")
            try:
                writes.append((ref, encode_power(power_target_kw, cfg.multiplier,
                                                 ref.full(self.ied.domain),
                                                 self.ied.max_power_kw)))
            except ValueRejectedError as exc:
                raise PublishError(exc.ref, exc.reason) from exc
        for ref, value in writes:
            full = ref.full(self.ied.domain)
            try:
                await self._request(self._need().write(full, iec61850.FC(ref.fc), value), full)
            except iec61850.IedDataAccessError as exc:
                self._fault("write", full, f"rejected: {exc}")
                raise PublishError(full, f"rejected by the IED: {exc}") from exc
            except LinkDownError as exc:
                self._fault("write", full, str(exc))
                self._events.put_nowait(exc)  # the session reconnects
                raise PublishError(full, f"link down: {exc}") from exc


def _configured(ref: Ref | None, name: str) -> Ref:
    if ref is None:
        raise PublishError(name, "not configured")
    return ref


def _groups(covers: Iterable[str]) -> frozenset[Group]:
    return frozenset(g for g in ALL_GROUPS if g in covers)


def _state_name(state: int) -> str:
    return SCHEDULE_STATES.get(state, str(state))


class Iec61850Source:
    """Every configured IED, one task each, sharing the ``iec61850`` link state."""

    def __init__(self, config: AdapterConfig, sink: ConstraintSink, *,
                 clock: Callable[[], datetime] = utc_now) -> None:
        links = LinkTracker(sink, [ied.name for ied in config.ieds])
        self.adapters: Mapping[str, IedAdapter] = {
            ied.name: IedAdapter(ied, sink, clock=clock, links=links) for ied in config.ieds}

    async def run(self) -> None:
        """Run every IED until ``stop``."""
        await asyncio.gather(*(adapter.run() for adapter in self.adapters.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(adapter.stop() for adapter in self.adapters.values()))
