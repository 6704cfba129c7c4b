"""Settlement exports: hash-chained rows, tamper detection, and gridflex settle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.export import read_table, settlement_table, verify_table, write_table
from aggregator.ledger import Ledger, settle_sessions
from aggregator.model import Measurand, MeterSample

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)


def fill(ledger: Ledger) -> None:
    samples = []
    for evse in (1, 2):
        for minute in range(0, 120, 15):
            samples.append(MeterSample(
                station_id="CS1", evse_number=evse, transaction_id=f"tx-{evse}",
                measured_at=T0 + timedelta(minutes=minute), measurand=Measurand.ENERGY_IMPORT,
                value=1000.0 * evse + 250.0 * minute / 15, received_at=T0))
    samples.append(MeterSample(station_id="CS1", evse_number=2, transaction_id="tx-2",
                               measured_at=T0 + timedelta(minutes=60),
                               measurand=Measurand.ENERGY_EXPORT, value=300.0, received_at=T0))
    ledger.add_samples(samples)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trips_and_detects_any_edit(tmp_path: Path, suffix: str) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    fill(ledger)
    table = settlement_table(settle_sessions(ledger, T0, T0 + timedelta(hours=2)))
    path = tmp_path / f"s{suffix}"
    write_table(table, path)
    again = read_table(path)
    assert verify_table(again) is None
    assert list(again["imported_kwh"]) == [1.75, 1.75]  # 7 steps of 250 Wh each
    edited = again.copy()
    edited.loc[1, "imported_kwh"] = 17.5  # someone "corrects" a figure
    assert verify_table(edited) == 1
    dropped = again.drop(index=0).reset_index(drop=True)  # or removes a row
    assert verify_table(dropped) == 0


def test_gridflex_settle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    fill(Ledger(url))
    out = tmp_path / "march.parquet"
    assert main(["settle", "--ledger", url, "--from", "2026-11-20T16:00:00Z",
                 "--to", "2026-11-20T18:00:00Z", "--format", "parquet", "--out",
                 str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sessions"] == 2 and summary["imported_kwh"] == 3.5
    assert summary["exported_kwh"] == 0.0  # one export reading has no delta yet
    assert verify_table(read_table(out)) is None
    assert summary["last_row_hash"] == read_table(out)["row_hash"].iloc[-1]
    from aggregator.session_journal import settlement_run
    issued = settlement_run(Ledger(url), summary["run_id"])  # the ledger keeps what was issued
    assert (issued.kind, issued.row_count, issued.seal) == ("sessions", 2,
                                                            summary["last_row_hash"])
    assert verify_table(issued.table, issued.columns) is None
    with pytest.raises(SystemExit):
        main(["settle", "--ledger", url, "--from", "2026-11-20 16:00", "--to",
              "2026-11-20T18:00:00Z"])
    assert "--from: date-time without a UTC offset" in capsys.readouterr().err
