"""The session and settlement journals on SQLite and PostgreSQL: each event once, sessions
folded from their events, settlement runs kept as issued and never overwritten."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from adapters.ocpp.csms import EvNeeds, StationEvent
from aggregator.export import COLUMNS, chain_table, settlement_table, verify_table
from aggregator.ledger import Ledger, SessionEnergy
from aggregator.session_journal import (
    record_session_event,
    record_settlement,
    sessions,
    settlement_run,
    settlement_runs_of,
)

T0 = datetime(2026, 11, 21, 17, tzinfo=UTC)
M = timedelta(minutes=1)
NEEDS: dict[str, Any] = {"requested_energy_transfer": "DC", "departure_time":
                         "2026-11-21T19:30:00Z", "dc_charging_parameters": {
                             "ev_max_current": 200, "ev_max_voltage": 450,
                             "energy_amount": 30500, "state_of_charge": 37}}


def started(tx: str, at: datetime, evse: int = 1) -> StationEvent:
    return StationEvent("started", "cs-1", evse, tx, at)


def needs(tx: str | None, at: datetime, raw: dict[str, Any], evse: int = 1) -> StationEvent:
    return StationEvent("needs", "cs-1", evse, tx, needs=EvNeeds(
        received_at=at, departure=None, energy_kwh=None, raw=raw))


def test_events_are_kept_once_and_folded_into_sessions(ledger: Ledger) -> None:
    assert record_session_event(ledger, started("tx-a", T0), "evse-1", T0 + M)
    assert not record_session_event(ledger, started("tx-a", T0), "evse-1", T0 + 2 * M)  # resent
    assert record_session_event(ledger, needs("tx-a", T0 + M, {"old": 1}), "evse-1", T0 + M)
    assert record_session_event(ledger, needs(None, T0 + 2 * M, NEEDS), "evse-1", T0 + 2 * M)
    assert record_session_event(ledger, StationEvent("ended", "cs-1", 1, "tx-a", T0 + 60 * M),
                                "evse-1", T0 + 61 * M)
    assert record_session_event(ledger, started("tx-b", T0 + 30 * M, evse=2), None,
                                T0 + 30 * M)
    assert not record_session_event(ledger, StationEvent("connected", "cs-1"), None, T0)

    closed, open_ = sessions(ledger, T0, T0 + 120 * M)
    assert (closed.transaction_id, closed.evse_id) == ("tx-a", "evse-1")
    assert (closed.started_at, closed.ended_at) == (T0, T0 + 60 * M)
    assert closed.needs == NEEDS and closed.needs_at == T0 + 2 * M  # the last, verbatim
    assert list(closed.needs["dc_charging_parameters"]) == list(
        NEEDS["dc_charging_parameters"])  # even the key order
    assert (open_.transaction_id, open_.evse_number, open_.evse_id) == ("tx-b", 2, None)
    assert open_.started_at == T0 + 30 * M and open_.ended_at is None and open_.needs is None
    # windows: ended before it, started after it, or still open
    assert [s.transaction_id for s in sessions(ledger, T0 + 61 * M, T0 + 999 * M)] == ["tx-b"]
    assert sessions(ledger, T0 - 60 * M, T0) == []
    [early] = sessions(ledger, T0 - 60 * M, T0 + M)
    assert early.transaction_id == "tx-a" and early.ended_at == T0 + 60 * M  # ended after it


def test_concurrent_writers_store_each_event_once(ledger: Ledger) -> None:
    events = [started(f"tx-{n}", T0 + n * M) for n in range(20)]
    barrier = threading.Barrier(2)
    results: list[list[bool]] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            results.append([record_session_event(ledger, e, "evse-1", T0) for e in events])
        except BaseException as err:  # pragma: no cover - reported below
            failures.append(err)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert [a + b for a, b in zip(*results, strict=True)] == [1] * 20  # one writer stored each
    assert len(sessions(ledger, T0, T0 + 60 * M)) == 20


def energy(tx: str, kwh: float) -> SessionEnergy:
    return SessionEnergy(station_id="cs-1", evse_number=1, transaction_id=tx, evse_id="evse-1",
                         imported_kwh=kwh, exported_kwh=0.0, first_reading=T0,
                         last_reading=T0 + 60 * M, readings=13, resets=0, gaps=1)


def test_a_settlement_run_round_trips_with_its_hash_chain(ledger: Ledger) -> None:
    table = settlement_table([energy("tx-a", 12.5), energy("tx-b", 1 / 3)])
    run_id = record_settlement(ledger, "sessions", table, params={"max_gap_s": 900.0},
                               period=(T0, T0 + 120 * M), created_at=T0 + 180 * M)
    run = settlement_run(ledger, run_id)
    assert run.kind == "sessions" and (run.period_start, run.period_end) == (T0, T0 + 120 * M)
    assert run.params == {"max_gap_s": 900.0} and run.created_at == T0 + 180 * M
    assert run.columns == tuple(COLUMNS) and run.row_count == 2
    assert run.seal == table["row_hash"].iloc[-1]
    assert verify_table(run.table, run.columns) is None
    assert list(run.table["row_hash"]) == list(table["row_hash"])
    tampered = run.table.copy()
    tampered.loc[1, "imported_kwh"] = 0.3
    assert verify_table(tampered, run.columns) == 1


def test_an_event_run_keeps_other_columns_and_empty_cells(ledger: Ledger) -> None:
    columns = ["event_id", "interval_start", "baseline_kwh", "flagged", "note"]
    frame = pd.DataFrame([["peak", "2026-11-21T17:00:00Z", 4.25, True, None],
                          ["peak", "2026-11-21T17:15:00Z", float("nan"), False, "gap"]],
                         columns=columns)
    table = chain_table(frame, columns)
    run_id = record_settlement(ledger, "event", table, params={"baseline": "10of10"},
                               period=(T0, T0 + 60 * M), event=("openadr", "peak", 3))
    run = settlement_run(ledger, run_id)
    assert (run.event_source, run.event_id, run.modification_number) == ("openadr", "peak", 3)
    assert verify_table(run.table, run.columns) is None and run.seal == table["row_hash"].iloc[-1]
    empty = record_settlement(ledger, "event", chain_table(frame.iloc[:0], columns), params={},
                              event=("openadr", "quiet", 0))
    assert settlement_run(ledger, empty).row_count == 0 and settlement_run(ledger, empty).seal == ""


def test_runs_are_never_overwritten(ledger: Ledger) -> None:
    table = settlement_table([energy("tx-a", 12.5)])
    first = record_settlement(ledger, "sessions", table, params={}, period=(T0, T0 + M))
    second = record_settlement(ledger, "sessions", settlement_table([energy("tx-a", 13.0)]),
                               params={}, period=(T0, T0 + M))
    assert first != second
    with pytest.raises(ValueError, match="never overwritten"):
        record_settlement(ledger, "sessions", settlement_table([]), params={},
                          period=(T0, T0 + M), run_id=first)
    assert settlement_run(ledger, first).table["imported_kwh"].tolist() == [12.5]
    assert settlement_run(ledger, second).table["imported_kwh"].tolist() == [13.0]
    assert [r for r, _ in settlement_runs_of(ledger, "sessions")] == [first, second]
    with pytest.raises(KeyError):
        settlement_run(ledger, "no-such-run")


def test_a_broken_chain_is_refused(ledger: Ledger) -> None:
    table = settlement_table([energy("tx-a", 12.5)])
    table.loc[0, "imported_kwh"] = 99.0
    with pytest.raises(ValueError, match="breaks at row 0"):
        record_settlement(ledger, "sessions", table, params={}, period=(T0, T0 + M))
    assert settlement_runs_of(ledger) == []
