"""Reports from a real libiec61850 IED: lost reports, buffered RCBs, refused RCBs.

Reports are lost on the way by ``LossyRelay`` (the IED sends them, the adapter never
sees them) and links are cut there while the IED keeps running.
"""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from typing import Any

import iec61850

from adapters.iec61850.client import REORDER_GRACE_S, IedAdapter, _Rcb, _Report
from tests.adapters.iec61850.conftest import (
    DOMAIN,
    RecordingSink,
    faults,
    libiec_config,
    running,
    set_limit,
    set_schedule,
    until,
)
from tests.peers.iec61850.process import Peer
from tests.peers.iec61850.relay import LossyRelay

LIMIT = "gw1:DESE1.ChaPwrLim.setMag.f"
SCHEDULES = "gw1:FSCC1.ActSchdRef.stVal"
URCB = "LLN0$RP$urcbLimits01"
BRCB = "LLN0$BR$brcbLimits01"
# the RptID opens an InformationReport (visible-string tag 0x8a, length, text)
SCHEDULES_REPORT = b"\x8a\x09Schedules"
SCHEDULES_RCB = "LLN0$RP$urcbSchedules01"
ONLY_LIMITS: dict[str, Any] = {"schedules": [], "active_schedule": None}


def carrying(value_w: float) -> bytes:
    """The bytes of an MMS FLOAT32 ``value_w`` in a report (tag 0x87, length 5, 8-bit
    exponent width, IEEE 754 big-endian): marks the reports that carry that value."""
    return b"\x87\x05\x08" + struct.pack(">f", value_w)


def go(body: Any) -> None:
    asyncio.run(body())


def rcb_state(adapter: IedAdapter, name: str) -> Any:
    (state,) = [r for r in adapter._state.rcbs if r.ref == name]
    return state


def received(adapter: IedAdapter, name: str) -> int:
    """Reports on RCB ``name`` since it was (re-)enabled; 0 while it is not enabled."""
    return sum(r.received for r in adapter._state.rcbs if r.ref == name)


async def change(peer: Peer, value_w: float) -> None:
    await asyncio.to_thread(set_limit, peer, value_w)


# -- sequence-number gaps -------------------------------------------------------------------
def test_lost_report_is_noticed_and_no_change_is_lost(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        async with LossyRelay(libiec.port) as relay:
            cfg = libiec_config(relay.port, integrity_period_s=1.0, ttl_s=5.0, **ONLY_LIMITS)
            async with running(cfg, sink) as adapter:
                await until(lambda: adapter.connected.is_set() and
                            sink.limit_kw(LIMIT) == 11.0 and adapter.stats.reports >= 1)
                interrogations = adapter.stats.interrogations
                relay.lose(carrying(6500.0))  # the data-change report comes first
                await change(libiec, 6500.0)
                await until(lambda: relay.dropped == 1, what="the report to be lost")
                # the next report (integrity) shows the gap: re-read, then interrogate (a
                # read already under way when the value changed may bring it earlier)
                await until(lambda: sink.limit_kw(LIMIT) == 6.5, what="6.5 kW after the gap")
                (gap,) = await until(lambda: faults(adapter, "sequence-gap"), what="gap")
                assert gap.startswith(f"{URCB}: SqNum ") and "1 missing" in gap
                assert adapter.stats.sequence_gaps == 1
                await until(lambda: adapter.stats.interrogations > interrogations,
                            what="general interrogation after the gap")
                # later changes flow as before
                await change(libiec, 5000.0)
                await until(lambda: sink.limit_kw(LIMIT) == 5.0)
                assert adapter.stats.sequence_gaps == 1

    go(body)


def test_several_lost_reports_are_one_gap(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        async with LossyRelay(libiec.port) as relay:
            cfg = libiec_config(relay.port, integrity_period_s=1.0, ttl_s=5.0, **ONLY_LIMITS)
            async with running(cfg, sink) as adapter:
                await until(lambda: sink.limit_kw(LIMIT) == 11.0 and adapter.stats.reports)
                # every report carrying 7 or 8 kW is lost, also an integrity report that
                # a loaded machine lets in between the changes; the first 9 kW one too
                for value_w, count in ((7000.0, 50), (8000.0, 50), (9000.0, 1)):
                    relay.lose(carrying(value_w), count)
                    await change(libiec, value_w)
                await until(lambda: sink.limit_kw(LIMIT) == 9.0, what="the last value")
                (gap,) = await until(lambda: faults(adapter, "sequence-gap"), what="gap")
                assert relay.dropped >= 3
                assert f"{relay.dropped} missing" in gap
                assert all(kw in (11.0, 9.0) for kw in published_kw(sink))

    go(body)


def published_kw(sink: RecordingSink) -> list[float | None]:
    return [items[0].import_max_kw for kind, scope, items in sink.history
            if kind == "publish" and scope == LIMIT and items]


def test_swapped_reports_are_late_not_lost() -> None:
    """The client can hand two reports over in swapped order: late is not lost."""
    adapter = IedAdapter(libiec_config(102, **ONLY_LIMITS), RecordingSink())
    rcb = _Rcb(URCB, frozenset({"limit"}), last_seq=254)
    adapter._state.rcbs.append(rcb)
    # 0 is handed over before 255, across the wrap of the URCB's INT8U SqNum
    assert adapter._track_sequence(rcb, 0, now=100.0) is None
    assert adapter._track_sequence(rcb, 255, now=100.01) is None
    assert adapter._judge_gaps(now=101.0) == []
    assert adapter.stats.late_reports == 1 and adapter.stats.sequence_gaps == 0
    # 1 and 2 never come: a gap once the grace is over, not before
    assert adapter._track_sequence(rcb, 3, now=102.0) is None
    assert adapter._judge_gaps(now=102.0 + REORDER_GRACE_S / 2) == []
    assert adapter._judge_gaps(now=102.0 + REORDER_GRACE_S) == [rcb]
    assert faults(adapter, "sequence-gap") == [
        f"{URCB}: SqNum 3 after 0: 2 missing; reports lost; re-read, interrogating"]
    # a report from before the last one that nobody missed: out of sequence at once
    assert adapter._track_sequence(rcb, 1, now=103.0) == \
        "SqNum 1 after 3: out of sequence; reports lost"
    assert adapter._track_sequence(rcb, 2, now=103.1) is None  # and on from there
    assert adapter._track_sequence(rcb, 100, now=103.2) is None  # 97 missing: pending
    assert adapter._judge_gaps(now=104.0) == [rcb]
    assert "SqNum 100 after 2: 97 missing" in faults(adapter, "sequence-gap")[-1]
    # more than half the SqNum range away: no telling ahead from behind
    assert adapter._track_sequence(rcb, 240, now=104.1) == \
        "SqNum 240 after 100: out of sequence; reports lost"


def test_sequence_numbers_wrap_without_a_false_gap(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        cfg = libiec_config(libiec.port, integrity_period_s=5.0, ttl_s=20.0, **ONLY_LIMITS)
        async with running(cfg, sink) as adapter:
            await until(lambda: sink.limit_kw(LIMIT) == 11.0 and adapter.stats.reports)
            for i in range(300):  # SqNum of a URCB is INT8U: 255 is followed by 0
                await change(libiec, 5000.0 + i)
            await until(lambda: sink.limit_kw(LIMIT) == 5.299, what="the last of 300 values")
            await until(lambda: adapter.stats.reports >= 300, what="every report")
            assert adapter.stats.sequence_gaps == 0, faults(adapter, "sequence-gap")
            assert rcb_state(adapter, URCB).modulus == 256

    go(body)


# -- buffered report control block ----------------------------------------------------------
def test_buffered_rcb_brings_changes(libiec: Peer) -> None:
    sink = RecordingSink()
    cfg = libiec_config(libiec.port, reports=[
        {"rcb": BRCB, "covers": ["limit"]},
        {"rcb": "LLN0$RP$urcbSchedules01", "covers": ["schedules"]}])

    async def body() -> None:
        async with running(cfg, sink) as adapter:
            await until(lambda: sink.limit_kw(LIMIT) == 11.0)
            state = rcb_state(adapter, BRCB)
            assert state.buffered and state.modulus == 65536 and state.rpt_id == "LimitsB"
            reports = adapter.stats.reports
            await change(libiec, 6500.0)
            await until(lambda: sink.limit_kw(LIMIT) == 6.5 and adapter.stats.reports > reports)
            set_schedule(libiec, "FSCH1", state=4, values_w=[4000.0])
            await until(lambda: SCHEDULES in sink.published, what="schedule by the URCB")
            # libiec61850 flags BufOvfl on the first report after enabling: not a loss
            assert faults(adapter, "buffer-overflow") == []
            assert faults(adapter, "reports") == []

    go(body)


def test_lost_report_on_a_buffered_rcb(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        async with LossyRelay(libiec.port) as relay:
            cfg = libiec_config(relay.port, integrity_period_s=1.0, ttl_s=5.0,
                                reports=[{"rcb": BRCB, "covers": ["limit"]}], **ONLY_LIMITS)
            async with running(cfg, sink) as adapter:
                await until(lambda: sink.limit_kw(LIMIT) == 11.0 and adapter.stats.reports)
                relay.lose(carrying(6500.0))
                await change(libiec, 6500.0)
                await until(lambda: relay.dropped == 1)
                await until(lambda: sink.limit_kw(LIMIT) == 6.5, what="6.5 kW after the gap")
                (gap,) = await until(lambda: faults(adapter, "sequence-gap"), what="gap")
                assert gap.startswith(f"{BRCB}: SqNum ") and "1 missing" in gap

    go(body)


def test_buffered_rcb_reconnect_reads_state_and_skips_stale_history(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        async with LossyRelay(libiec.port) as relay:
            cfg = libiec_config(relay.port, integrity_period_s=2.0, ttl_s=10.0,
                                reports=[{"rcb": BRCB, "covers": ["limit"]}], **ONLY_LIMITS)
            async with running(cfg, sink) as adapter:
                await until(lambda: sink.limit_kw(LIMIT) == 11.0 and adapter.stats.reports)
                for i in range(20):  # buffered in the BRCB while we are connected
                    await change(libiec, 5000.0 + i)
                await until(lambda: sink.limit_kw(LIMIT) == 5.019)
                await relay.cut()
                await until(lambda: not adapter.connected.is_set(), what="link lost")
                for value_w in (6000.0, 6100.0, 6200.0):  # changes during the outage
                    await change(libiec, value_w)
                seen = relay.reports
                await until(lambda: adapter.connected.is_set() and
                            sink.limit_kw(LIMIT) == 6.2, what="the value after reconnect")
                await asyncio.sleep(0.3)
                # the buffer was purged on enable: no replay of its 20+ stale entries
                assert relay.reports - seen < 5
                assert adapter.stats.connects == 2
                assert faults(adapter, "buffer-overflow") == []

    go(body)


def test_buffer_overflow_is_answered_like_a_gap(libiec: Peer) -> None:
    sink = RecordingSink()
    cfg = libiec_config(libiec.port, reports=[{"rcb": BRCB, "covers": ["limit"]}],
                        **ONLY_LIMITS)

    async def body() -> None:
        async with running(cfg, sink) as adapter:
            await until(lambda: adapter.connected.is_set() and adapter.stats.reports)
            state = rcb_state(adapter, BRCB)
            interrogations, publishes = adapter.stats.interrogations, adapter.stats.publishes
            seq = (state.last_seq + 1) % state.modulus
            await adapter._on_reports([_Report(BRCB, seq, None, buffer_overflow=True)])
            assert adapter.stats.buffer_overflows == 1
            assert any("buffer overflowed" in f for f in faults(adapter, "buffer-overflow"))
            assert adapter.stats.interrogations == interrogations + 1
            assert adapter.stats.publishes > publishes

    go(body)


# -- RCBs the IED refuses -------------------------------------------------------------------
def test_reserved_rcb_is_taken_when_released(own_libiec: Peer) -> None:
    sink = RecordingSink()
    cfg = libiec_config(own_libiec.port, reports=[{"rcb": URCB, "covers": ["limit"]}],
                        **ONLY_LIMITS)

    async def body() -> None:
        other = await iec61850.IedConnection.connect(f"127.0.0.1:{own_libiec.port}")
        handle = await other.get_rcb_values(f"{DOMAIN}/{URCB}")
        handle.resv = True
        handle.rpt_ena = True
        await other.set_rcb_values(handle, iec61850.RcbWriteMask.fields("resv", "rpt_ena"))
        try:
            async with running(cfg, sink) as adapter:
                await until(lambda: faults(adapter, "reports"), what="refused RCB")
                assert "polling instead" in faults(adapter, "reports")[0]
                await change(own_libiec, 7000.0)
                await until(lambda: sink.limit_kw(LIMIT) == 7.0, what="polled value")
                assert adapter.stats.reports == 0
                await other.disconnect()
                await until(lambda: adapter.stats.reports > 0, what="reports after release")
                polls = adapter.stats.polls
                await change(own_libiec, 8000.0)
                await until(lambda: sink.limit_kw(LIMIT) == 8.0)
                await asyncio.sleep(0.5)
                assert adapter.stats.polls == polls  # reports now; polling stopped
                assert len(faults(adapter, "reports")) == 1  # retries do not flood
        finally:
            if other.is_connected:
                await other.abort()

    go(body)


def test_group_without_a_working_rcb_is_polled_while_others_report(libiec: Peer) -> None:
    sink = RecordingSink()
    cfg = libiec_config(libiec.port, reports=[
        {"rcb": URCB, "covers": ["limit"]},
        {"rcb": "LLN0$RP$nope01", "covers": ["schedules"]}])

    async def body() -> None:
        async with running(cfg, sink) as adapter:
            await until(lambda: sink.limit_kw(LIMIT) == 11.0)
            assert any("nope01" in f for f in faults(adapter, "reports"))
            start_ms = int(datetime.now(UTC).timestamp()) * 1000 - 60_000
            set_schedule(libiec, "FSCH1", state=4, start_ms=start_ms, values_w=[4000.0])
            await until(lambda: SCHEDULES in sink.published, what="polled schedule")
            assert sink.published[SCHEDULES][0].import_max_kw == 4.0
            await change(libiec, 6000.0)  # while the limit still comes by report
            await until(lambda: sink.limit_kw(LIMIT) == 6.0)
            assert adapter.stats.reports > 0

    go(body)


def test_silent_rcb_is_polled_and_re_enabled_while_another_reports(libiec: Peer) -> None:
    sink = RecordingSink()

    async def body() -> None:
        async with LossyRelay(libiec.port) as relay:
            cfg = libiec_config(relay.port, integrity_period_s=0.3)
            async with running(cfg, sink) as adapter:
                await until(lambda: sink.limit_kw(LIMIT) == 11.0 and
                            received(adapter, SCHEDULES_RCB) > 0)
                # the schedules RCB falls silent; the limits one keeps reporting
                relay.lose(SCHEDULES_REPORT, count=8)
                start_ms = int(datetime.now(UTC).timestamp()) * 1000 - 60_000
                set_schedule(libiec, "FSCH1", state=4, start_ms=start_ms, values_w=[4000.0])
                await until(lambda: [f for f in faults(adapter, "reports")
                                     if SCHEDULES_RCB in f and "no report for" in f],
                            timeout_s=15.0, what="the silence noticed")
                await until(lambda: SCHEDULES in sink.published, what="the schedule")
                assert sink.published[SCHEDULES][0].import_max_kw == 4.0
                await until(lambda: relay.losing == 0 and
                            received(adapter, SCHEDULES_RCB) > 0, timeout_s=15.0,
                            what="schedule reports again")
                assert adapter.stats.connects == 1  # no link drop on the way

    go(body)
