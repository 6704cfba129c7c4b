"""The MMS side of the 90-8 adapter: one task per IED on the ``iec61850`` (Rust) client.

Per IED: connect with a timeout, enable the configured report control blocks (reserve,
integrity period, trigger options, general interrogation), then read everything once.
A report (data change or integrity) is a notification: the objects its data set covers
are re-read in one MMS Read and published, so reports and polls share one decode path
and a schedule is always taken as one consistent snapshot; the reports queued when a
read starts are all answered by it (a burst costs one read).  What no enabled RCB covers
is polled: an RCB the IED refuses (reserved by another client, missing) leaves its groups
to polling and is tried again every poll interval.  An RCB silent for two integrity
periods is polled and re-enabled.  Sequence-number gaps (a skipped SqNum still missing after
``REORDER_GRACE_S``: the client can swap two reports), a buffered RCB's BufOvfl and
ConfRev changes are recorded and answered with a re-read and a general interrogation.
A BRCB's buffer is purged when it is enabled: the adapter re-reads the IED on every
(re)connect, so replaying buffered history would only repeat stale notifications.

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
- ``poll_reports(timeout)`` holds the connection until a report comes or the timeout
  runs out: every read, write or RCB request waits behind it.  Our dispatcher polls only
  while no request is in flight and each request cancels the pending poll (cancelling
  releases the connection at once; no report was lost in the tests).
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

from adapters.iec61850.config import AdapterConfig, IedConfig, Ref, ReportConfig
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
REPORT_POLL_MS = 100
REORDER_GRACE_S = 0.25  # a skipped SqNum that comes this late was reordered, not lost
MAX_PENDING_MISSING = 256  # a longer run of skipped SqNums is a gap at once
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
    buffer_overflows: int = 0
    late_reports: int = 0  # handed over after a later one (not lost)
    interrogations: int = 0
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
    buffered: bool = False
    last_report_at: float = 0.0  # event-loop time of the last report (or of enabling)
    received: int = 0  # reports since enabled
    pending: list[_Gap] = field(default_factory=list)  # SqNums skipped, maybe only late


@dataclass
class _Gap:
    noticed_at: float  # event-loop time
    after: int
    got: int
    seqs: set[int]


@dataclass(frozen=True, slots=True)
class _Report:
    rcb: str
    seq: int | None
    conf_rev: int | None
    buffer_overflow: bool = False


@dataclass
class _State:
    rcbs: list[_Rcb] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # RCB -> why it is not enabled
    next_poll_at: float = 0.0


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
        self._in_flight = 0  # MMS requests under way (the dispatcher waits for none)
        self._idle = asyncio.Event()
        self._idle.set()
        self._poll: asyncio.Future[int] | None = None

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
        self._state.next_poll_at = loop.time() + self.ied.poll_interval_s
        while not self._stopping.is_set():
            timeout_s = max(0.0, self._next_deadline() - loop.time())
            try:
                event = await asyncio.wait_for(self._events.get(), timeout_s)
            except TimeoutError:
                await self._on_timer()
                continue
            # every report queued so far is answered by one read: the read starts after
            # each of them arrived (a burst or a BRCB replay costs one read, not one each)
            events = [event]
            while not self._events.empty():
                events.append(self._events.get_nowait())
            for item in events:
                if isinstance(item, Exception):
                    raise item if isinstance(item, LinkDownError) else LinkDownError(str(item))
            await self._on_reports([item for item in events if isinstance(item, _Report)])

    def _silence_s(self) -> float:
        """How long an enabled RCB may stay quiet (two integrity periods and a request)."""
        return 2 * self.ied.integrity_period_s + self.ied.request_timeout_s

    def _polled_groups(self) -> set[Group]:
        """The configured groups no enabled RCB covers: these are polled."""
        wanted: set[Group] = set()
        if self.ied.limit is not None:
            wanted.add("limit")
        if self.ied.schedules:
            wanted.add("schedules")
        for rcb in self._state.rcbs:
            wanted -= rcb.covers
        return wanted

    def _next_deadline(self) -> float:
        deadlines = [rcb.last_report_at + self._silence_s() for rcb in self._state.rcbs]
        deadlines += [gap.noticed_at + REORDER_GRACE_S for rcb in self._state.rcbs
                      for gap in rcb.pending]
        if self._polled_groups() or self._state.failed or not deadlines:
            deadlines.append(self._state.next_poll_at)
        return min(deadlines)

    async def _on_timer(self) -> None:
        """Re-enable silent RCBs, retry failed ones, poll what no report covers."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for rcb in self._judge_gaps(now):
            await self._interrogate(rcb)
        for rcb in list(self._state.rcbs):
            if now < rcb.last_report_at + self._silence_s():
                continue
            self._fault("reports", self._full_rcb(rcb.ref), f"no report for "
                        f"{now - rcb.last_report_at:.3g} s; polling and re-enabling reports")
            self._state.rcbs.remove(rcb)
            cfg = next(c for c in self.ied.reports if c.rcb == rcb.ref)
            enabled = await self._enable_one(cfg)
            self.stats.polls += 1
            await self.refresh(rcb.covers)
            if enabled is not None:
                self._start_dispatcher()
                await self._interrogate(enabled)
        if now < self._state.next_poll_at:
            return
        self._state.next_poll_at = now + self.ied.poll_interval_s
        if self._state.failed:
            await self._retry_failed()
        polled = self._polled_groups()
        if polled:
            self.stats.polls += 1
            await self.refresh(polled)

    async def _on_reports(self, reports: Sequence[_Report]) -> None:
        """Check sequence, overflow and ConfRev of each report; one re-read for all."""
        now = asyncio.get_running_loop().time()
        groups: set[Group] = set()
        interrogate: list[_Rcb] = []
        for report in reports:
            self.stats.reports += 1
            rcb = next((r for r in self._state.rcbs if r.ref == report.rcb), None)
            if rcb is None:
                continue
            rcb.last_report_at = now
            rcb.received += 1
            lost = False
            if report.seq is not None:
                reason = self._track_sequence(rcb, report.seq, now)
                if reason is not None:
                    self._gap(rcb, reason)
                    lost = True
            # libiec61850 flags BufOvfl on the first report after enabling (the buffer
            # was just purged): nothing before the enable is missed, the re-read on
            # (re)connect has it
            if report.buffer_overflow and rcb.received > 1:
                self.stats.buffer_overflows += 1
                self._fault("buffer-overflow", rcb.ref, "the IED's report buffer overflowed: "
                            "reports lost; re-reading and interrogating")
                lost = True
            if report.conf_rev is not None and rcb.conf_rev is not None and \
                    report.conf_rev != rcb.conf_rev:
                self._fault("confrev", rcb.ref, f"ConfRev {report.conf_rev}, expected "
                                                f"{rcb.conf_rev}: data set changed")
                rcb.conf_rev = report.conf_rev
                lost = True
            groups |= rcb.covers
            if lost and rcb not in interrogate:
                interrogate.append(rcb)
        if groups:
            await self.refresh(groups)
        for rcb in self._judge_gaps(now):
            if rcb not in interrogate:
                interrogate.append(rcb)
        for rcb in interrogate:
            await self._interrogate(rcb)

    async def _on_report(self, report: _Report) -> None:
        await self._on_reports([report])

    def _track_sequence(self, rcb: _Rcb, seq: int, now: float) -> str | None:
        """Follow SqNum; return why the report is out of sequence (None: it fits).

        The client can hand over two reports in swapped order (its dispatch runs on more
        than one thread), so skipped numbers are only *missing* at first: one that comes
        within ``REORDER_GRACE_S`` was late, not lost (``_judge_gaps`` decides).
        """
        last = rcb.last_seq
        if last is None:
            rcb.last_seq = seq
            return None
        ahead = (seq - last) % rcb.modulus  # a late report is "behind": modulus - k
        if 0 < ahead <= min(MAX_PENDING_MISSING + 1, rcb.modulus // 2 - 1):
            if ahead > 1:
                rcb.pending.append(_Gap(now, last, seq, {
                    (last + k) % rcb.modulus for k in range(1, ahead)}))
            rcb.last_seq = seq
            return None
        for gap in rcb.pending:
            if seq in gap.seqs:
                gap.seqs.discard(seq)
                self.stats.late_reports += 1
                rcb.pending = [g for g in rcb.pending if g.seqs]
                return None
        rcb.last_seq = seq
        if 0 < ahead < rcb.modulus // 2:
            return f"SqNum {seq} after {last}: {ahead - 1} missing; reports lost"
        return f"SqNum {seq} after {last}: out of sequence; reports lost"

    def _gap(self, rcb: _Rcb, reason: str) -> None:
        self.stats.sequence_gaps += 1
        self._fault("sequence-gap", rcb.ref, f"{reason}; re-read, interrogating")

    def _judge_gaps(self, now: float) -> list[_Rcb]:
        """Missing SqNums still missing after the grace: lost reports.  The RCBs to
        interrogate (the read that followed the later report already re-read their data)."""
        found = []
        for rcb in self._state.rcbs:
            due = [g for g in rcb.pending if now - g.noticed_at >= REORDER_GRACE_S]
            if not due:
                continue
            rcb.pending = [g for g in rcb.pending if g not in due]
            for gap in due:
                self._gap(rcb, f"SqNum {gap.got} after {gap.after}: {len(gap.seqs)} missing; "
                               "reports lost")
            found.append(rcb)
        return found

    # -- reports ---------------------------------------------------------------------------
    def _full_rcb(self, rcb: str) -> str:
        return f"{self.ied.domain}/{rcb}"

    async def _enable_reports(self) -> None:
        """(Re-)enable every configured RCB; one that fails leaves its groups to polling
        (and is tried again every poll interval)."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            self._dispatcher = None
        self._state.rcbs = []
        self._state.failed = {}
        enabled = [rcb for cfg in self.ied.reports
                   if (rcb := await self._enable_one(cfg)) is not None]
        if enabled:
            self._start_dispatcher()
            for rcb in enabled:
                await self._interrogate(rcb)

    async def _retry_failed(self) -> None:
        for cfg in self.ied.reports:
            if cfg.rcb not in self._state.failed:
                continue
            rcb = await self._enable_one(cfg)
            if rcb is not None:
                log.info("iec61850 %s: reports on %s enabled", self.ied.name, rcb.ref)
                self._start_dispatcher()
                await self._interrogate(rcb)

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(self._need()))

    async def _enable_one(self, cfg: ReportConfig) -> _Rcb | None:
        """Reserve (URCB) or purge (BRCB) and enable one RCB; on refusal note it, None."""
        conn = self._need()
        loop = asyncio.get_running_loop()
        ref = self._full_rcb(cfg.rcb)
        try:
            handle = await self._request(conn.get_rcb_values(ref), ref)
            if handle.rpt_ena:  # a stale enable of ours (or someone else's): restart
                handle.rpt_ena = False
                await self._request(conn.set_rcb_values(
                    handle, iec61850.RcbWriteMask.fields("rpt_ena")), ref)
            buffered = bool(handle.is_buffered)
            if buffered:
                # every (re)connect re-reads the IED: a BRCB's buffered history would only
                # replay stale notifications (the whole buffer, from its start), so drop it
                handle.purge_buf = True
                await self._request(conn.set_rcb_values(
                    handle, iec61850.RcbWriteMask.fields("purge_buf")), ref)
            rpt_id = handle.rpt_id or ref
            rcb = _Rcb(cfg.rcb, _groups(cfg.covers), rpt_id, 65536 if buffered else 256,
                       None, handle.conf_rev, buffered, loop.time())

            events = self._events  # this connection's queue: a late report of an old
            # connection must not land in a newer session's queue

            def deliver(report: iec61850.ClientReport, name: str = cfg.rcb) -> None:
                item = _Report(name, report.sequence_number, report.conf_rev,
                               bool(report.buffer_overflow))
                loop.call_soon_threadsafe(events.put_nowait, item)

            with contextlib.suppress(iec61850.IedError, ValueError):  # none installed
                await conn.uninstall_report_handler(ref)
            await self._request(conn.install_report_handler(ref, deliver, rpt_id=rpt_id), ref)
            if not buffered:
                handle.resv = True
            handle.integrity_period_ms = int(self.ied.integrity_period_s * 1000)
            handle.trigger_options = iec61850.TriggerOptions(
                data_change=True, quality_change=True, data_update=True, integrity=True,
                general_interrogation=True)
            handle.opt_flds = iec61850.ReportOptFlds(
                sequence_number=True, report_timestamp=True, reason_for_inclusion=True,
                dataset_name=True, conf_rev=True, buffer_overflow=buffered,
                entry_id=buffered)
            handle.rpt_ena = True
            fields = ["integrity_period", "trigger_options", "opt_flds", "rpt_ena"]
            if not buffered:
                fields.insert(0, "resv")
            await self._request(conn.set_rcb_values(
                handle, iec61850.RcbWriteMask.fields(*fields)), ref)
        except iec61850.IedDataAccessError as exc:
            reason = f"cannot enable ({exc}); polling instead"
            if self._state.failed.get(cfg.rcb) != reason:
                self._fault("reports", ref, reason)
            self._state.failed[cfg.rcb] = reason
            return None
        self._state.failed.pop(cfg.rcb, None)
        rcb.last_report_at = loop.time()
        self._state.rcbs.append(rcb)
        return rcb

    async def _interrogate(self, rcb: _Rcb) -> None:
        """Ask for a general interrogation; a refusal is a fault, not a link loss."""
        ref = self._full_rcb(rcb.ref)
        try:
            await self._request(self._need().trigger_gi(ref), ref)
        except iec61850.IedDataAccessError as exc:
            self._fault("reports", ref, f"general interrogation refused ({exc})")
            return
        self.stats.interrogations += 1

    async def _dispatch(self, conn: iec61850.IedConnection) -> None:
        """Pull reports until the connection fails; a failure ends the session.

        ``poll_reports`` keeps every other request on the connection waiting until it
        returns (a read took ~90 ms instead of 0.4 ms behind ``poll_reports(100)``), so it
        only runs while no request is in flight, and ``_request`` cancels it.  Reports
        that arrive meanwhile wait in the client and come with the next poll.
        """
        poll: asyncio.Future[int] | None = None
        try:
            while True:
                await self._idle.wait()
                poll = self._poll = asyncio.ensure_future(conn.poll_reports(REPORT_POLL_MS))
                await asyncio.wait({poll})
                if not poll.cancelled():
                    poll.result()  # raises when the connection failed
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._events.put_nowait(LinkDownError(f"report channel failed: {exc}"))
        finally:
            if poll is not None and not poll.done():
                poll.cancel()
            if self._poll is poll:  # not a newer dispatcher's
                self._poll = None

    # -- reading ---------------------------------------------------------------------------
    def _need(self) -> iec61850.IedConnection:
        if self._conn is None:
            raise LinkDownError("not connected")
        return self._conn

    async def _request(self, request: Any, what: str) -> Any:
        """Await one MMS request under the per-request timeout; a timeout drops the link.

        A pending ``poll_reports`` holds the connection until it returns, so it is
        cancelled first (and the dispatcher waits until no request is in flight).
        """
        self._in_flight += 1
        self._idle.clear()
        poll = self._poll
        if poll is not None and not poll.done():
            poll.cancel()
        try:
            return await asyncio.wait_for(request, self.ied.request_timeout_s + 0.5)
        except iec61850.IedDataAccessError:
            raise
        except (*_CONNECTION_ERRORS, iec61850.IedError) as exc:
            raise LinkDownError(f"{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

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
