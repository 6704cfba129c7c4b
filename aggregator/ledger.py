"""The settlement ledger: append-only meter samples on SQLite (a file) or PostgreSQL (a URL).

Ingestion is idempotent on the sample's natural key (a unique constraint, inserts that
conflict do nothing), so a station's retransmission or a replayed batch is stored once.
Times are UTC microseconds (``*_us``), exact and identical on both databases; missing
key parts are stored as ``''`` because NULLs never collide in a unique constraint.  The
schema comes from the alembic migrations in ``aggregator/migrations``.
SQLite runs in WAL mode with full synchronous commits: a committed batch survives a kill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from aggregator.model import Measurand, MeterSample

metadata = MetaData()

meter_samples = Table(
    "meter_samples", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("station_id", String(64), nullable=False),
    Column("evse_number", Integer, nullable=False),
    Column("transaction_id", String(64), nullable=False),
    Column("measured_at_us", BigInteger, nullable=False),
    Column("measurand", String(40), nullable=False),
    Column("phase", String(8), nullable=False),
    Column("context", String(32), nullable=False),
    Column("value", Float, nullable=False),
    Column("evse_id", String(64)),
    Column("received_at_us", BigInteger, nullable=False),
    Column("signed_data", Text),
    UniqueConstraint("station_id", "evse_number", "transaction_id", "measured_at_us",
                     "measurand", "phase", "context", name="uq_meter_samples_natural_key"),
)

KEY_COLUMNS = ["station_id", "evse_number", "transaction_id", "measured_at_us", "measurand",
               "phase", "context"]


def to_us(moment: datetime) -> int:
    """UTC microseconds since the epoch (exact)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, tz=UTC).replace(
        microsecond=value % 1_000_000)


def _row(sample: MeterSample) -> dict[str, object]:
    return {"station_id": sample.station_id, "evse_number": sample.evse_number,
            "transaction_id": sample.transaction_id or "",
            "measured_at_us": to_us(sample.measured_at), "measurand": sample.measurand.value,
            "phase": sample.phase or "", "context": sample.context or "",
            "value": sample.value, "evse_id": sample.evse_id,
            "received_at_us": to_us(sample.received_at), "signed_data": sample.signed_data}


class Ledger:
    """Meter samples (and what is settled from them) in one database."""

    def __init__(self, url: str = "sqlite:///gridflex-ledger.db") -> None:
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_durable)
        elif self.engine.dialect.name != "postgresql":
            raise ValueError(f"url: only sqlite and postgresql are supported, got "
                             f"{self.engine.dialect.name!r}")
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (alembic; a no-op when current)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def add_samples(self, samples: Sequence[MeterSample]) -> int:
        """Store samples in one transaction; returns how many were new (duplicates skip)."""
        if not samples:
            return 0
        rows = [_row(sample) for sample in samples]
        with self.engine.begin() as connection:  # one transaction: all or nothing
            if self.engine.dialect.name == "postgresql":
                return _copy_in(connection, rows)
            statement = sqlite_insert(meter_samples).on_conflict_do_nothing(
                index_elements=KEY_COLUMNS).returning(meter_samples.c.id)
            stored = connection.execute(statement, rows)
            return len(stored.all())  # RETURNING yields only the rows actually inserted

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(
                select(func.count()).select_from(meter_samples)).scalar_one())

    def samples(self) -> Iterator[MeterSample]:
        """Every stored sample, in meter-time order."""
        with self.engine.connect() as connection:
            for row in connection.execute(select(meter_samples).order_by(
                    meter_samples.c.measured_at_us, meter_samples.c.id)):
                yield MeterSample(
                    station_id=row.station_id, evse_number=row.evse_number,
                    transaction_id=row.transaction_id or None,
                    measured_at=from_us(row.measured_at_us),
                    measurand=Measurand(row.measurand), value=row.value,
                    received_at=from_us(row.received_at_us), evse_id=row.evse_id,
                    phase=row.phase or None, context=row.context or None,
                    signed_data=row.signed_data)


_COPY_COLUMNS = [c.name for c in meter_samples.columns if c.name != "id"]


def _copy_in(connection: Connection, rows: list[dict[str, object]]) -> int:
    """PostgreSQL: COPY into a per-connection staging table, then insert what is new.

    Several times faster than multi-row INSERTs for large batches; same semantics (the
    unique key decides), same transaction.
    """
    columns = ", ".join(_COPY_COLUMNS)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS staging_samples AS SELECT {columns} "
                       "FROM meter_samples WITH NO DATA")
        cursor.execute("TRUNCATE staging_samples")
        with cursor.copy(f"COPY staging_samples ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in _COPY_COLUMNS])
        cursor.execute(f"INSERT INTO meter_samples ({columns}) SELECT {columns} FROM "
                       "staging_samples ON CONFLICT DO NOTHING RETURNING id")
        return len(cursor.fetchall())
    finally:
        cursor.close()


def _sqlite_durable(connection: object, _: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")  # concurrent writers wait, not fail
    cursor.close()


@dataclass
class LedgerSink:
    """The CSMS's ``MeterSink`` backed by a ``Ledger`` (database work off the event loop)."""

    ledger: Ledger

    async def put(self, samples: Sequence[MeterSample]) -> None:
        await asyncio.to_thread(self.ledger.add_samples, samples)


@dataclass(frozen=True)
class SessionEnergy:
    """Energy of one session (station, EVSE, transaction) in a settlement period.

    Import and export come from their own registers, never netted.  ``resets`` counts
    readings below the one before (the energy across a reset is not guessed);
    ``gaps`` counts steps between readings longer than the allowed gap.
    """

    station_id: str
    evse_number: int
    transaction_id: str | None
    evse_id: str | None
    imported_kwh: float
    exported_kwh: float
    first_reading: datetime
    last_reading: datetime
    readings: int
    resets: int
    gaps: int


SETTLE_SQL = """
WITH steps AS (
  SELECT station_id, evse_number, transaction_id, measurand, measured_at_us, evse_id,
         value - LAG(value) OVER w AS delta_wh,
         measured_at_us - LAG(measured_at_us) OVER w AS step_us
  FROM meter_samples
  WHERE measurand IN ('Energy.Active.Import.Register', 'Energy.Active.Export.Register')
  WINDOW w AS (PARTITION BY station_id, evse_number, transaction_id, measurand
               ORDER BY measured_at_us, context)
)
SELECT station_id, evse_number, transaction_id, MAX(evse_id) AS evse_id,
  SUM(CASE WHEN measurand = 'Energy.Active.Import.Register' AND delta_wh > 0
           THEN delta_wh ELSE 0 END) AS imported_wh,
  SUM(CASE WHEN measurand = 'Energy.Active.Export.Register' AND delta_wh > 0
           THEN delta_wh ELSE 0 END) AS exported_wh,
  MIN(measured_at_us) AS first_us, MAX(measured_at_us) AS last_us, COUNT(*) AS readings,
  SUM(CASE WHEN delta_wh < 0 THEN 1 ELSE 0 END) AS resets,
  SUM(CASE WHEN step_us > :max_gap_us THEN 1 ELSE 0 END) AS gaps
FROM steps
WHERE measured_at_us >= :from_us AND measured_at_us < :to_us
GROUP BY station_id, evse_number, transaction_id
ORDER BY station_id, evse_number, transaction_id
"""


def settle_sessions(ledger: Ledger, start: datetime, end: datetime, *,
                    max_gap_s: float = 900.0) -> list[SessionEnergy]:
    """Energy per session from register deltas whose later reading lies in [start, end).

    A delta belongs to the period of its later reading, so consecutive periods add up
    exactly: nothing is lost or counted twice at a boundary.
    """
    with ledger.engine.connect() as connection:
        rows = connection.execute(text(SETTLE_SQL), {
            "from_us": to_us(start), "to_us": to_us(end),
            "max_gap_us": int(max_gap_s * 1_000_000)}).all()
    return [SessionEnergy(
        station_id=row.station_id, evse_number=int(row.evse_number),
        transaction_id=row.transaction_id or None, evse_id=row.evse_id,
        imported_kwh=float(row.imported_wh or 0.0) / 1000.0,
        exported_kwh=float(row.exported_wh or 0.0) / 1000.0,
        first_reading=from_us(int(row.first_us)), last_reading=from_us(int(row.last_us)),
        readings=int(row.readings), resets=int(row.resets or 0), gaps=int(row.gaps or 0))
        for row in rows]
