"""Per-event DR settlement from a ledger of register readings, against hand calculations.

The site's load is a made-up profile (``power_kw``); the expected baseline, delivered kWh
and value are worked out from that profile here, not by the code under test.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import mean

import numpy as np
import pytest

from aggregator.dr_events import DrEvent, record_event
from aggregator.event_settlement import (
    EVENT_COLUMNS,
    EVENT_TEXT_COLUMNS,
    SettlementError,
    event_table,
    settle_event,
)
from aggregator.export import read_table, verify_table, write_table
from aggregator.ledger import Ledger
from aggregator.model import GridConstraint, Measurand, MeterSample, PriceSignal
from aggregator.service_config import ServiceConfig, service_config_from_mapping

EVENT_DAY = datetime(2026, 11, 20, tzinfo=UTC)  # a Friday
START, END = EVENT_DAY + timedelta(hours=16), EVENT_DAY + timedelta(hours=18)
FIRST_DAY = EVENT_DAY - timedelta(days=16)  # history from Wednesday 4 November
EARLIER_EVENT_DAY = date(2026, 11, 18)  # another DR event: not a typical day
STEP = timedelta(minutes=15)
PRICE = 0.5
CAP = 1.2  # ten_in_ten's same-day adjustment cap (+20 %)

CONFIG = {
    "nodes": [{"id": "feeder", "kind": "feeder"},
              {"id": "site-a", "kind": "site", "parent": "feeder"},
              {"id": "site-b", "kind": "site", "parent": "feeder"}],
    "ocpp": {"stations": [
        {"id": "CS1", "version": "2.1", "evses": [
            {"number": 1, "id": "e1", "node": "site-a", "max_import_kw": 22},
            {"number": 2, "id": "e2", "node": "site-a", "max_import_kw": 11,
             "max_export_kw": 11, "v2g": True}]},
        {"id": "CS2", "evses": [{"number": 1, "id": "e3", "node": "site-b",
                                 "max_import_kw": 50}]}]}}
PLACES = {"e1": ("CS1", 1), "e2": ("CS1", 2), "e3": ("CS2", 1)}


def history_kw(moment: datetime) -> float:
    """e1's draw on a history weekday afternoon: differs from day to day."""
    return 6.0 + (moment.day % 4)


def power_kw(evse: str, moment: datetime) -> tuple[float, float]:
    """(import kW, export kW) of an EVSE over the 15 minutes from ``moment``."""
    hour = moment.hour + moment.minute / 60
    if evse == "e3":
        return 50.0, 0.0  # another site: must not show up in site-a's settlement
    if moment.weekday() >= 5:
        return (20.0, 0.0) if evse == "e1" else (0.0, 0.0)  # weekends: another kind of day
    if moment.date() == EARLIER_EVENT_DAY:
        return (100.0, 0.0) if evse == "e1" else (0.0, 0.0)
    if moment.date() == EVENT_DAY.date():
        if 12 <= hour < 16:
            return (16.0, 0.0) if evse == "e1" else (4.0, 0.0)  # a busy morning: 20 kW
        if 16 <= hour < 18:
            return (3.0, 0.0) if evse == "e1" else (0.0, 2.0)  # the event: 3 kW in, 2 kW out
        if 18 <= hour < 19:
            return (5.0, 0.0) if evse == "e1" else (0.0, 0.0)
        return 0.0, 0.0
    if 12 <= hour < 18:
        return (history_kw(moment), 0.0) if evse == "e1" else (4.0, 0.0)
    return 0.0, 0.0


def register_samples(skip: set[tuple[str, datetime]] = frozenset()) -> list[MeterSample]:
    """Import (and, for the V2G EVSE, export) registers every 15 minutes, integrated from
    ``power_kw``; ``skip`` leaves out the readings of (EVSE, time)."""
    samples = []
    for evse, (station, number) in PLACES.items():
        registers_wh = [1000.0, 500.0]
        moment = FIRST_DAY
        while moment <= EVENT_DAY + timedelta(days=1):
            if (evse, moment) not in skip:
                pairs = [(Measurand.ENERGY_IMPORT, registers_wh[0])]
                if evse == "e2":
                    pairs.append((Measurand.ENERGY_EXPORT, registers_wh[1]))
                samples.extend(MeterSample(
                    station_id=station, evse_number=number, transaction_id=None,
                    measured_at=moment, measurand=measurand, value=value,
                    received_at=moment + timedelta(seconds=5), evse_id=evse,
                    context="Sample.Clock") for measurand, value in pairs)
            imported_kw, exported_kw = power_kw(evse, moment)
            registers_wh[0] += imported_kw * 250.0  # kW over 15 minutes, in Wh
            registers_wh[1] += exported_kw * 250.0
            moment += STEP
    return samples


def modification(number: int, *, cap_kw: float, received: timedelta,
                 event_id: str = "evening", start: datetime = START,
                 end: datetime = END) -> DrEvent:
    """What the VEN journals for one modification of an OpenADR event on site-a."""
    limit = GridConstraint(node_id="site-a", start=start, end=end, source="openadr",
                           source_ref=f"event {event_id} mod {number}",
                           received_at=start - received, import_max_kw=cap_kw, priority=3)
    price = PriceSignal(start=start, end=end, import_price_per_kwh=PRICE,
                        export_price_per_kwh=0.0, source="openadr")
    return DrEvent(source="openadr", event_id=event_id, modification_number=number,
                   status="far", program="oadr://dso/evening", received_at=start - received,
                   start=start, end=end, test_event=False, opt_in=True, applied=True,
                   reason="policy: always opt in", limits=(limit,), prices=(price,))


def record(ledger: Ledger, skip: set[tuple[str, datetime]] = frozenset()) -> ServiceConfig:
    """The ledger as the service leaves it: the readings and the journaled events."""
    ledger.add_samples(register_samples(skip))
    earlier = datetime.combine(EARLIER_EVENT_DAY, START.time(), UTC)
    record_event(ledger, modification(0, cap_kw=10.0, received=timedelta(hours=5),
                                      event_id="tuesday", start=earlier,
                                      end=earlier + timedelta(hours=2)))
    record_event(ledger, modification(0, cap_kw=30.0, received=timedelta(hours=3)))
    record_event(ledger, modification(1, cap_kw=20.0, received=timedelta(hours=2)))
    return service_config_from_mapping(CONFIG)


def weekdays_before(day: datetime, count: int, skip: set[date]) -> list[datetime]:
    """The ``count`` most recent weekdays before ``day``, leaving out ``skip``."""
    found: list[datetime] = []
    back = day
    while len(found) < count:
        back -= timedelta(days=1)
        if back.weekday() < 5 and back.date() not in skip:
            found.append(back)
    return found


def expected_ten_in_ten_kw(skip: set[date]) -> float:
    """By hand: site-a's mean load over the ten chosen days (flat over 12-18 h: the event
    window and the adjustment window alike), times the same-day factor, capped."""
    days = weekdays_before(EVENT_DAY, 10, {EARLIER_EVENT_DAY, *skip})
    typical_kw = mean(history_kw(d) + 4.0 for d in days)
    return typical_kw * min(CAP, max(2 - CAP, 20.0 / typical_kw))


def test_ten_in_ten_delivered_kwh_and_value_match_a_hand_calculation(ledger: Ledger) -> None:
    config = record(ledger)
    settled = settle_event(ledger, "evening", config)
    assert settled.event.modification_number == 1  # the latest modification is settled
    assert [e.modification_number for e in settled.earlier] == [0]
    assert settled.nodes == ("site-a",) and settled.evse_ids == ("e1", "e2")
    baseline_kw = expected_ten_in_ten_kw(set())
    actual_kw = 3.0 - 2.0  # import minus export during the event
    rows = settled.rows
    assert len(rows) == 8 and not rows["flagged"].any() and settled.excluded_days == ()
    assert list(rows.index) == [START + i * STEP for i in range(8)]
    assert np.allclose(rows["baseline_kw"], baseline_kw)
    assert np.allclose(rows["actual_kw"], actual_kw)
    assert np.allclose(rows["delivered_kwh"], (baseline_kw - actual_kw) * 0.25)
    assert settled.delivered_kwh == pytest.approx((baseline_kw - actual_kw) * 2.0)
    assert settled.value == pytest.approx((baseline_kw - actual_kw) * 2.0 * PRICE)
    assert np.allclose(rows["value"], rows["delivered_kwh"] * PRICE)


def test_a_bare_grid_tree_finds_the_evses_by_the_evse_id_on_the_samples(
        ledger: Ledger) -> None:
    config = record(ledger)
    by_tree = settle_event(ledger, "evening", config.tree)
    by_config = settle_event(ledger, "evening", config)
    assert by_tree.rows.equals(by_config.rows)


def test_gaps_are_flagged_never_filled_and_a_gappy_history_day_is_excluded(
        ledger: Ledger) -> None:
    missing_in_event = START + 2 * STEP  # 16:30: the step 16:15-16:45 is 30 minutes long
    history_gap = datetime(2026, 11, 17, 13, tzinfo=UTC)  # inside the adjustment hours
    idle = {("e1", datetime(2026, 11, 19, tzinfo=UTC) + k * STEP) for k in range(1, 48)}
    config = record(ledger, {("e1", missing_in_event), ("e1", history_gap), *idle})
    settled = settle_event(ledger, "evening", config)
    rows = settled.rows
    flagged = list(rows.index[rows["flagged"]])
    assert flagged == [START + STEP, START + 2 * STEP]
    assert rows.loc[flagged, "actual_kw"].isna().all()
    assert rows.loc[flagged, "value"].isna().all()
    assert all("e1 import: gap between readings" in r for r in rows.loc[flagged, "flag_reason"])
    # 19 Nov has no readings from 00:15 to 11:45, but its register did not move: it counts
    assert settled.excluded_days == ("2026-11-17 excluded: e1 import: gap between readings",)
    baseline_kw = expected_ten_in_ten_kw({date(2026, 11, 17)})
    assert np.allclose(rows["baseline_kw"], baseline_kw)
    assert settled.delivered_kwh == pytest.approx((baseline_kw - 1.0) * 0.25 * 6)
    assert settled.flagged_intervals == 2


def test_readings_no_single_meter_could_give_are_flagged(ledger: Ledger) -> None:
    config = record(ledger)
    stray = MeterSample(station_id="CS1", evse_number=1, transaction_id="other",
                        measured_at=START + timedelta(minutes=5),
                        measurand=Measurand.ENERGY_IMPORT, value=1e9,
                        received_at=START + timedelta(minutes=6), evse_id="e1")
    ledger.add_samples([stray])  # 1 GWh in 5 minutes on a 22 kW EVSE, then a drop back
    rows = settle_event(ledger, "evening", config).rows
    assert list(rows.index[rows["flagged"]]) == [START]
    assert rows.loc[START, "flag_reason"] == "e1 import: step above the EVSE's rating"


def test_meter_before_and_meter_after(ledger: Ledger) -> None:
    config = record(ledger)
    before = settle_event(ledger, "evening", config, baseline="meter_before")
    assert np.allclose(before.rows["baseline_kw"], 16.0 + 4.0)  # 15-16 h on the day
    assert before.delivered_kwh == pytest.approx((20.0 - 1.0) * 2.0)
    after = settle_event(ledger, "evening", config, baseline="meter_after")
    assert np.allclose(after.rows["baseline_kw"], 5.0)  # 18-19 h on the day
    assert after.value == pytest.approx((5.0 - 1.0) * 2.0 * PRICE)


def test_a_baseline_that_cannot_be_formed_names_the_day_or_hour_and_the_evse(
        ledger: Ledger) -> None:
    hour_before = [START - k * STEP for k in (1, 2)]
    config = record(ledger, {("e2", t) for t in hour_before})
    with pytest.raises(SettlementError, match=r"meter_before .*before the event .*e2 "):
        settle_event(ledger, "evening", config, baseline="meter_before")
    later = START + timedelta(weeks=9)  # a Friday with no readings in its 45 days before
    record_event(ledger, modification(0, cap_kw=20.0, received=timedelta(hours=2),
                                      event_id="later", start=later, end=later + 2 * STEP))
    with pytest.raises(SettlementError, match=r"only 0 eligible days.*2027-01-21 excluded: "
                                              r"e1 import: no register readings"):
        settle_event(ledger, "later", config)


def test_unknown_or_unsettleable_events_are_clear_errors(ledger: Ledger) -> None:
    config = record(ledger)
    with pytest.raises(SettlementError, match="event_id: no DR event 'nope' in the journal"):
        settle_event(ledger, "nope", config)
    with pytest.raises(SettlementError, match="baseline: one of"):
        settle_event(ledger, "evening", config, baseline="match_day")
    with pytest.raises(SettlementError, match="interval"):
        settle_event(ledger, "evening", config, interval=timedelta(minutes=7))
    cancelled = dataclasses.replace(modification(2, cap_kw=20.0, received=timedelta(hours=1)),
                                    status="cancelled", applied=False,
                                    reason="cancellation acknowledged")
    record_event(ledger, cancelled)
    with pytest.raises(SettlementError, match=r"mod 2 \(cancelled\) was not applied"):
        settle_event(ledger, "evening", config)


def test_exports_are_hash_chained_in_csv_and_parquet(ledger: Ledger, tmp_path: Path) -> None:
    config = record(ledger, {("e1", START + 2 * STEP)})
    table = event_table(settle_event(ledger, "evening", config))
    assert verify_table(table, EVENT_COLUMNS) is None
    for name in ("event.csv", "event.parquet"):
        write_table(table, tmp_path / name)
        back = read_table(tmp_path / name, EVENT_TEXT_COLUMNS)
        assert verify_table(back, EVENT_COLUMNS) is None
        assert list(back["flagged"]) == list(table["flagged"])
        back.loc[5, "delivered_kwh"] = float(back.loc[5, "delivered_kwh"]) + 0.001
        assert verify_table(back, EVENT_COLUMNS) == 5
    assert set(table["event_id"]) == {"evening"} and set(table["modification_number"]) == {1}


def test_gridflex_settle_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import tomli_w

    from aggregator.cli import main

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.migrate()
    record(ledger)
    config = tmp_path / "service.toml"
    config.write_text(tomli_w.dumps(CONFIG))
    out = tmp_path / "evening.parquet"
    assert main(["settle", "--ledger", url, "--event", "evening", "--config", str(config),
                 "--format", "parquet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    baseline_kw = expected_ten_in_ten_kw(set())
    assert (summary["modification"], summary["earlier_modifications"]) == (1, [0])
    assert summary["evses"] == ["e1", "e2"] and summary["intervals"] == 8
    assert summary["delivered_kwh"] == pytest.approx((baseline_kw - 1.0) * 2.0, abs=1e-3)
    back = read_table(out, EVENT_TEXT_COLUMNS)
    assert verify_table(back, EVENT_COLUMNS) is None
    assert summary["last_row_hash"] == back["row_hash"].iloc[-1]
    from aggregator.session_journal import settlement_run
    issued = settlement_run(Ledger(url), summary["run_id"])  # the ledger keeps what was issued
    assert (issued.kind, issued.event_id, issued.modification_number) == ("event", "evening", 1)
    assert issued.seal == summary["last_row_hash"]
    assert verify_table(issued.table, EVENT_COLUMNS) is None
    assert main(["settle", "--ledger", url, "--event", "nothing", "--config",
                 str(config)]) == 2
    assert "nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the grid tree is needed to find the EVSEs
        main(["settle", "--ledger", url, "--event", "evening"])
    assert "--config" in capsys.readouterr().err
