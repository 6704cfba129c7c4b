"""The DR event journal on SQLite and PostgreSQL: every modification once, round-tripped."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from aggregator.dr_events import DrEvent, events_in, journal, record_event
from aggregator.ledger import Ledger
from aggregator.model import DemandCharge, GridConstraint, PriceSignal

T0 = datetime(2026, 11, 21, 17, tzinfo=UTC)
H = timedelta(hours=1)


def modification(number: int, *, status: str = "far", applied: bool = True,
                 cap_kw: float = 80.0) -> DrEvent:
    limit = GridConstraint(node_id="site-a", start=T0, end=T0 + 2 * H, source="openadr",
                           source_ref=f"event peak mod {number}", received_at=T0 - H,
                           import_max_kw=cap_kw, priority=3, expires_at=T0 + 3 * H)
    price = PriceSignal(start=T0, end=T0 + H, import_price_per_kwh=0.5,
                        export_price_per_kwh=0.4, source="openadr")
    charge = DemandCharge(node_id="site-a", start=T0, end=T0 + 2 * H, price_per_kw=8.5,
                          source="openadr", source_ref=f"event peak mod {number} DEMAND_CHARGE",
                          received_at=T0 - H)
    return DrEvent(source="openadr", event_id="peak", modification_number=number,
                   status=status, program="oadr://dso/caps",
                   received_at=T0 - H + number * timedelta(minutes=1), start=T0,
                   end=T0 + 2 * H, test_event=False, opt_in=True, applied=applied,
                   reason="policy: always opt in", limits=(limit,), prices=(price,),
                   demand_charges=(charge,))


def test_modifications_are_kept_once_each_and_round_trip(ledger: Ledger) -> None:
    first = modification(0)
    assert record_event(ledger, first)
    assert not record_event(ledger, first)  # the VTN resent it: stored once
    assert record_event(ledger, modification(1, cap_kw=50.0))
    stored = journal(ledger, event_id="peak")
    assert stored == [first, modification(1, cap_kw=50.0)]
    assert journal(ledger, source="ieee2030_5") == []


def test_events_in_takes_the_latest_applied_modification(ledger: Ledger) -> None:
    record_event(ledger, modification(0))
    record_event(ledger, modification(1, cap_kw=40.0))
    [latest] = events_in(ledger, T0, T0 + H)
    assert latest.modification_number == 1 and latest.limits[0].import_max_kw == 40.0
    assert events_in(ledger, T0 + 2 * H, T0 + 3 * H) == []
    record_event(ledger, modification(2, status="cancelled", applied=False))
    assert events_in(ledger, T0, T0 + H) == []


def test_concurrent_writers_store_one_copy(ledger: Ledger) -> None:
    import threading
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def write() -> None:
        barrier.wait()
        results.append(record_event(ledger, dataclasses.replace(modification(7))))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert len(journal(ledger)) == 1
