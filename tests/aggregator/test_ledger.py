"""The ledger on SQLite and on the machine's PostgreSQL: idempotent, durable, settled."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.ledger import Ledger, settle_sessions
from aggregator.model import Measurand, MeterSample

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
def reading(minute: int, value_wh: float, measurand: Measurand = Measurand.ENERGY_IMPORT,
            tx: str | None = "tx-1", evse: int = 1, context: str | None = None) -> MeterSample:
    return MeterSample(station_id="CS1", evse_number=evse, transaction_id=tx,
                       measured_at=T0 + timedelta(minutes=minute), measurand=measurand,
                       value=value_wh, received_at=T0 + timedelta(minutes=minute, seconds=2),
                       evse_id=f"A-0{evse}", context=context)


def test_ingest_is_idempotent_and_round_trips(ledger: Ledger) -> None:
    batch = [reading(0, 1000.0, context="Transaction.Begin"), reading(15, 2500.0),
             reading(15, 99.0, Measurand.SOC), reading(30, 4000.0, tx=None)]
    assert ledger.add_samples(batch) == 4
    assert ledger.add_samples(batch) == 0  # a replayed batch stores nothing twice
    assert ledger.add_samples([*batch, reading(45, 5000.0)]) == 1
    stored = list(ledger.samples())
    assert len(stored) == ledger.count() == 5
    assert stored[0] == batch[0]  # times, None key parts and context come back as they went
    assert stored[3].transaction_id is None


def test_begin_and_end_in_the_same_second_are_both_kept(ledger: Ledger) -> None:
    begin = reading(0, 1000.0, context="Transaction.Begin")
    end = reading(0, 1000.0, context="Transaction.End")
    assert ledger.add_samples([begin, end]) == 2


def test_settlement_from_register_deltas_never_nets(ledger: Ledger) -> None:
    ledger.add_samples([
        reading(0, 10_000.0), reading(15, 12_000.0), reading(30, 15_500.0),
        reading(0, 500.0, Measurand.ENERGY_EXPORT), reading(15, 500.0, Measurand.ENERGY_EXPORT),
        reading(30, 2_500.0, Measurand.ENERGY_EXPORT),
        reading(0, 7_000.0, tx="tx-2", evse=2), reading(60, 9_000.0, tx="tx-2", evse=2)])
    energy = {e.transaction_id: e for e in settle_sessions(ledger, T0, T0 + timedelta(hours=2))}
    one = energy["tx-1"]
    assert (one.imported_kwh, one.exported_kwh) == (5.5, 2.0)  # both counted, never netted
    assert (one.resets, one.gaps, one.readings, one.evse_id) == (0, 0, 6, "A-01")
    two = energy["tx-2"]
    assert two.imported_kwh == 2.0 and two.gaps == 1  # 60 min between readings: flagged


def test_register_reset_is_flagged_not_guessed(ledger: Ledger) -> None:
    ledger.add_samples([reading(0, 50_000.0), reading(15, 51_000.0), reading(30, 200.0),
                        reading(45, 1_200.0)])
    (energy,) = settle_sessions(ledger, T0, T0 + timedelta(hours=1))
    assert energy.resets == 1
    assert energy.imported_kwh == 2.0  # 1 kWh before and 1 kWh after the reset, no more


def test_consecutive_periods_add_up_exactly(ledger: Ledger) -> None:
    ledger.add_samples([reading(m, 1000.0 + 100.0 * m) for m in range(0, 120, 5)])
    whole = settle_sessions(ledger, T0, T0 + timedelta(hours=2))[0].imported_kwh
    first = settle_sessions(ledger, T0, T0 + timedelta(minutes=47))[0].imported_kwh
    second = settle_sessions(ledger, T0 + timedelta(minutes=47),
                             T0 + timedelta(hours=2))[0].imported_kwh
    assert first + second == pytest.approx(whole) == pytest.approx(11.5)


WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from aggregator.ledger import Ledger
from aggregator.model import Measurand, MeterSample
ledger = Ledger(sys.argv[1])
t0 = datetime(2026, 11, 20, tzinfo=UTC)
first, step = int(sys.argv[2]), int(sys.argv[3])
for batch in range(first, first + 10_000, step):
    samples = [MeterSample(station_id="CS1", evse_number=1, transaction_id="t",
                           measured_at=t0 + timedelta(seconds=i), measurand=Measurand.ENERGY_IMPORT,
                           value=float(i), received_at=t0) for i in range(batch, batch + step)]
    ledger.add_samples(samples)
    print(batch + step, flush=True)  # acknowledged: every sample below this is committed
"""


def _url(ledger: Ledger) -> str:
    return ledger.engine.url.render_as_string(hide_password=False)


def test_a_killed_writer_loses_nothing_it_acknowledged(ledger: Ledger) -> None:
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, _url(ledger), "0", "50"],
                              stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    assert writer.stdout is not None
    acknowledged = 0
    for line in writer.stdout:
        acknowledged = int(line)
        if acknowledged >= 1000:  # well into ingestion: kill it without warning
            writer.send_signal(signal.SIGKILL)
            break
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    stored = {s.measured_at for s in ledger.samples()}
    expected = {datetime(2026, 11, 20, tzinfo=UTC) + timedelta(seconds=i)
                for i in range(acknowledged)}
    assert expected <= stored  # every acknowledged sample survived
    # a restart resumes where it stopped; the overlap is not stored twice
    resumed = subprocess.run([sys.executable, "-c", WRITER, _url(ledger), str(acknowledged),
                              "50"], capture_output=True, text=True, cwd=root, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(root)})
    assert resumed.returncode == 0, resumed.stderr
    assert ledger.count() == acknowledged + 10_000


def test_concurrent_writers_store_each_sample_once(ledger: Ledger) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, _url(ledger), "0", step],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                cwd=root, env=env) for step in ("100", "250")]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    assert ledger.count() == 10_000  # the same 10,000 samples, written twice over


def test_the_migrations_build_exactly_the_declared_schema(ledger: Ledger) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import aggregator.dr_events
    import aggregator.plans  # noqa: F401
    from aggregator.ledger import metadata

    with ledger.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == "0004"
        assert compare_metadata(context, metadata) == []  # no drift between code and schema
    ledger.migrate()  # running again changes nothing
    assert ledger.add_samples([reading(0, 1.0)]) == 1
