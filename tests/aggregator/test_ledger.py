"""The ledger on SQLite and on the machine's PostgreSQL: idempotent, durable, settled."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection

from aggregator.ledger import (
    Ledger,
    SessionEnergy,
    meter_samples,
    settle_sessions,
    settle_sessions_raw,
    to_us,
)
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
    assert_same_settlement(ledger, datetime(2026, 11, 20, tzinfo=UTC),
                           datetime(2026, 11, 21, tzinfo=UTC))  # buckets agree with samples


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
    # concurrent writers of the same session leave its buckets exact
    assert_same_settlement(ledger, datetime(2026, 11, 20, 0, 30, tzinfo=UTC),
                           datetime(2026, 11, 20, 2, 15, tzinfo=UTC), max_gap_s=0.5)


def test_the_migrations_build_exactly_the_declared_schema(ledger: Ledger) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    import aggregator.dr_events
    import aggregator.plans
    import aggregator.session_journal  # noqa: F401
    from aggregator.ledger import metadata

    with ledger.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
        assert context.get_current_revision() == head
        assert compare_metadata(context, metadata) == []  # no drift between code and schema
    ledger.migrate()  # running again changes nothing
    assert ledger.add_samples([reading(0, 1.0)]) == 1


def _alembic_config(connection: Connection) -> Config:
    """The ledger's alembic configuration, running on ``connection``."""
    import aggregator

    config = Config()
    config.set_main_option("script_location",
                           str(Path(aggregator.__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def _exact(session: SessionEnergy) -> tuple[object, ...]:
    return (session.station_id, session.evse_number, session.transaction_id, session.evse_id,
            session.first_reading, session.last_reading, session.readings, session.resets,
            session.gaps)


def assert_same_settlement(ledger: Ledger, start: datetime, end: datetime, *,
                           max_gap_s: float = 900.0) -> list[SessionEnergy]:
    """Bucket settlement equals the raw-window reference (energies up to summation order)."""
    ours = settle_sessions(ledger, start, end, max_gap_s=max_gap_s)
    reference = settle_sessions_raw(ledger, start, end, max_gap_s=max_gap_s)
    assert [_exact(s) for s in ours] == [_exact(s) for s in reference]
    for a, b in zip(ours, reference, strict=True):
        assert a.imported_kwh == pytest.approx(b.imported_kwh, rel=1e-9, abs=1e-9)
        assert a.exported_kwh == pytest.approx(b.exported_kwh, rel=1e-9, abs=1e-9)
    return ours


def test_late_and_out_of_order_readings_settle_like_the_raw_window(ledger: Ledger) -> None:
    later = [reading(m, 1000.0 + 40.0 * m) for m in range(60, 200, 5)]
    ledger.add_samples(later[::-1])  # newest first
    ledger.add_samples([reading(m, 900.0 + 10.0 * m, Measurand.ENERGY_EXPORT)
                        for m in range(0, 200, 7)])
    # a late reading before all others: the first delta of the later hours now starts here
    ledger.add_samples([reading(2, 5000.0), reading(3, 5000.0, context="Transaction.Begin")])
    # a register reset and a 40-minute hole in another session, across an hour boundary
    ledger.add_samples([reading(m, v, tx="tx-2", evse=2) for m, v in
                        ((50, 9000.0), (55, 9100.0), (70, 50.0), (110, 450.0), (115, 500.0))])
    ledger.add_samples([reading(62, 2000.0, tx="tx-2", evse=2)])  # late, between two
    ledger.add_samples(later[:4])  # a replayed batch stores nothing
    for start_min, end_min in ((0, 240), (0, 60), (60, 120), (47, 133), (61, 62), (59, 181),
                               (-600, 600), (64.5, 65.5)):
        settled = assert_same_settlement(ledger, T0 + timedelta(minutes=start_min),
                                         T0 + timedelta(minutes=end_min))
        assert all(s.readings > 0 for s in settled)
    whole = {s.transaction_id: s for s in assert_same_settlement(
        ledger, T0, T0 + timedelta(hours=4), max_gap_s=1800.0)}
    assert (whole["tx-2"].resets, whole["tx-2"].gaps) == (2, 1)  # 9100 -> 2000 -> 50; 70->110
    assert (whole["tx-1"].resets, whole["tx-1"].gaps) == (1, 1)  # 5000 -> 3400 after 57 min
    parts = [settle_sessions(ledger, T0 + timedelta(minutes=a), T0 + timedelta(minutes=b))
             for a, b in ((0, 61.5), (61.5, 119), (119, 240))]
    for tx in ("tx-1", "tx-2"):
        assert sum(s.imported_kwh for p in parts for s in p if s.transaction_id == tx) == \
            pytest.approx(whole[tx].imported_kwh)


def test_whole_hours_are_settled_from_the_buckets(ledger: Ledger) -> None:
    ledger.add_samples([reading(m, 1000.0 + 100.0 * m) for m in range(0, 180, 3)])
    before = settle_sessions(ledger, T0, T0 + timedelta(hours=3))
    with ledger.engine.begin() as connection:  # the samples of the whole hours are gone ...
        connection.execute(meter_samples.delete())
    after = settle_sessions(ledger, T0, T0 + timedelta(hours=3))
    assert after == before and after[0].imported_kwh == pytest.approx(17.7)  # ... not their sums
    assert settle_sessions_raw(ledger, T0, T0 + timedelta(hours=3)) == []


def test_an_upgraded_ledger_settles_its_old_samples(ledger: Ledger) -> None:
    from alembic import command
    from sqlalchemy import insert

    with ledger.engine.begin() as connection:  # back to 0004: samples without buckets
        command.downgrade(_alembic_config(connection), "0004")
        connection.execute(insert(meter_samples), [
            {"station_id": "CS1", "evse_number": 1, "transaction_id": tx,
             "measured_at_us": to_us(T0 + timedelta(minutes=minute)), "measurand": measurand,
             "phase": "", "context": "", "value": value, "evse_id": "A-01",
             "received_at_us": to_us(T0), "signed_data": None}
            for tx, minute, measurand, value in (
                ("t1", 0, Measurand.ENERGY_IMPORT.value, 100.0),
                ("t1", 70, Measurand.ENERGY_IMPORT.value, 900.0),
                ("t1", 75, Measurand.ENERGY_IMPORT.value, 50.0),
                ("t1", 130, Measurand.ENERGY_IMPORT.value, 250.0),
                ("t1", 70, Measurand.ENERGY_EXPORT.value, 10.0),
                ("t1", 140, Measurand.ENERGY_EXPORT.value, 30.0),
                ("t1", 75, Measurand.SOC.value, 55.0),
                ("", 30, Measurand.ENERGY_IMPORT.value, 5.0),
                ("", 95, Measurand.ENERGY_IMPORT.value, 8.0))])
    ledger.migrate()  # 0005 buckets the existing samples
    for start_min, end_min in ((0, 180), (60, 120), (10, 135), (71, 76)):
        assert_same_settlement(ledger, T0 + timedelta(minutes=start_min),
                               T0 + timedelta(minutes=end_min))
    (t0, t1) = settle_sessions(ledger, T0, T0 + timedelta(hours=3))
    assert (t1.transaction_id, t1.imported_kwh, t1.exported_kwh, t1.resets) == (
        "t1", 1.0, 0.02, 1)  # 800 Wh before the reset and 200 Wh after it
    assert t0.transaction_id is None and t0.gaps == 1


_KEYS = [("CS1", 1, "tx-a"), ("CS1", 1, "tx-b"), ("CS2", 2, None)]
_CONTEXTS = [None, "Sample.Periodic", "Transaction.Begin", "Transaction.End"]
_readings = st.lists(st.tuples(
    st.sampled_from(_KEYS),
    st.sampled_from([Measurand.ENERGY_IMPORT, Measurand.ENERGY_EXPORT, Measurand.SOC]),
    st.one_of(st.integers(0, 5 * 3_600_000_000),  # within five hours, microsecond times
              st.integers(0, 300).map(lambda minute: minute * 60_000_000)),  # or ties
    st.sampled_from(_CONTEXTS),
    st.floats(0.0, 50_000.0, allow_nan=False)), min_size=1, max_size=60)
_edges = st.one_of(st.integers(-3_600_000_000, 6 * 3_600_000_000),
                   st.integers(-1, 6).map(lambda hour: hour * 3_600_000_000))  # whole hours


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(readings=_readings, batches=st.integers(1, 6), rng=st.randoms(use_true_random=False),
       periods=st.lists(st.tuples(_edges, _edges), min_size=1, max_size=4),
       max_gap_s=st.sampled_from([0.5, 60.0, 900.0, 2000.0, 7200.0]))
def test_bucket_settlement_equals_the_raw_window(
        readings: list[tuple[tuple[str, int, str | None], Measurand, int, str | None, float]],
        batches: int, rng: random.Random, periods: list[tuple[int, int]],
        max_gap_s: float) -> None:
    """Random samples (resets, gaps, duplicates) ingested out of order in random batches."""
    import tempfile

    samples = [MeterSample(station_id=station, evse_number=evse, transaction_id=tx,
                           measured_at=T0 + timedelta(microseconds=us), measurand=measurand,
                           value=value, received_at=T0, evse_id=f"E-{evse}", context=context)
               for (station, evse, tx), measurand, us, context, value in readings]
    rng.shuffle(samples)
    replayed = samples[:rng.randrange(len(samples) + 1)]
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{folder}/ledger.db")
        size = -(-len(samples) // batches)
        for first in range(0, len(samples), size):
            ledger.add_samples(samples[first:first + size])
        ledger.add_samples(replayed)  # duplicates store nothing and change nothing
        for a, b in periods:
            assert_same_settlement(ledger, T0 + timedelta(microseconds=min(a, b)),
                                   T0 + timedelta(microseconds=max(a, b)), max_gap_s=max_gap_s)
        ledger.engine.dispose()
