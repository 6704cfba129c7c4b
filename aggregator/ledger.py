"""The settlement ledger: append-only meter samples on SQLite (a file) or PostgreSQL (a URL).

Ingestion is idempotent on the sample's natural key (a unique constraint, inserts that
conflict do nothing), so a station's retransmission or a replayed batch is stored once.
Times are UTC microseconds (``*_us``), exact and identical on both databases; missing
key parts are stored as ``''`` because NULLs never collide in a unique constraint.  The
schema comes from the alembic migrations in ``aggregator/migrations``.
SQLite runs in WAL mode with full synchronous commits: a committed batch survives a kill.
Settlement reads hourly register buckets (``settlement_buckets``) kept exact at ingest, in
the transaction that stores the samples, so a month settles without reading every sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
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

# Per session register and UTC hour: what settlement needs from that hour's readings, each
# reading's delta and step taken from the reading before it (``prev_*``, possibly in an
# earlier hour).  Recomputed from the samples whenever a batch adds readings to the hour.
settlement_buckets = Table(
    "settlement_buckets", metadata,
    Column("station_id", String(64), nullable=False),
    Column("evse_number", Integer, nullable=False, autoincrement=False),
    Column("transaction_id", String(64), nullable=False),
    Column("measurand", String(40), nullable=False),
    Column("hour_us", BigInteger, nullable=False, autoincrement=False),
    Column("prev_us", BigInteger),  # the reading before the hour's first (None: none)
    Column("prev_value", Float),
    Column("first_us", BigInteger, nullable=False),
    Column("last_us", BigInteger, nullable=False),
    Column("readings", Integer, nullable=False),
    Column("positive_wh", Float, nullable=False),  # sum of the positive deltas
    Column("resets", Integer, nullable=False),  # negative deltas
    Column("max_inner_step_us", BigInteger),  # longest step between two of the hour's readings
    Column("evse_id", String(64)),
    PrimaryKeyConstraint("station_id", "evse_number", "transaction_id", "measurand",
                         "hour_us", name="pk_settlement_buckets"),
    Index("ix_settlement_buckets_hour_us", "hour_us"),
    Index("ix_settlement_buckets_max_inner_step_us", "max_inner_step_us"),  # rare long steps
)

HOUR_US = 3_600_000_000
REGISTERS = (Measurand.ENERGY_IMPORT.value, Measurand.ENERGY_EXPORT.value)

KEY_COLUMNS = ["station_id", "evse_number", "transaction_id", "measured_at_us", "measurand",
               "phase", "context"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """UTC microseconds since the epoch (exact)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    """The UTC datetime of ``value`` microseconds since the epoch (exact)."""
    return _EPOCH + timedelta(microseconds=value)



def _row(sample: MeterSample) -> tuple[object, ...]:
    """The sample's column values in ``_COPY_COLUMNS`` order (its times are aware UTC)."""
    return (sample.station_id, sample.evse_number, sample.transaction_id or "",
            (sample.measured_at - _EPOCH) // _ONE_US, sample.measurand.value,
            sample.phase or "", sample.context or "", sample.value, sample.evse_id,
            (sample.received_at - _EPOCH) // _ONE_US, sample.signed_data)


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
        """Store samples in one transaction; returns how many were new (duplicates skip).

        The settlement buckets the new register readings fall in (and the next bucket of
        each, whose first delta may now start from a new reading) are recomputed from the
        samples in the same transaction, so late or out-of-order readings stay exact.
        """
        if not samples:
            return 0
        rows = [_row(sample) for sample in samples]
        with self.engine.begin() as connection:  # one transaction: all or nothing
            _prepare_touched(connection)
            if self.engine.dialect.name == "postgresql":
                _lock_sessions(connection, rows)
                stored = _copy_in(connection, rows)
            else:
                new = _insert_sqlite(connection, rows)
                _touch(connection, new)
                stored = len(new)
            if stored:
                for statement in (_NEXT_BUCKETS_SQL, _PREV_READINGS_SQL, _REFRESH_BUCKETS_SQL):
                    connection.execute(text(statement))
            return stored

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
_TOUCH_COLUMNS = ["station_id", "evse_number", "transaction_id", "measurand", "measured_at_us"]
_BUCKET_KEY = "station_id, evse_number, transaction_id, measurand, hour_us"
_SORT_KEY = "hour_us, evse_number, station_id, transaction_id, measurand"  # cheap keys first
_HOUR_OF = f"measured_at_us - (((measured_at_us % {HOUR_US}) + {HOUR_US}) % {HOUR_US})"
_REGISTER_LIST = ", ".join(f"'{name}'" for name in REGISTERS)


_SQLITE_CHUNK = 2000  # rows per INSERT: 11 parameters each, under SQLite's 32,766


def _insert_sqlite(connection: Connection,
                   rows: Sequence[tuple[object, ...]]) -> list[tuple[Any, ...]]:
    """SQLite: multi-row INSERTs on the driver cursor; returns the new rows' bucket keys.

    ``ON CONFLICT DO NOTHING ... RETURNING`` yields only the rows actually inserted.
    """
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    new: list[tuple[Any, ...]] = []
    row_marks = "(" + ", ".join("?" * len(_COPY_COLUMNS)) + ")"
    try:
        for first in range(0, len(rows), _SQLITE_CHUNK):
            chunk = rows[first:first + _SQLITE_CHUNK]
            cursor.execute(
                f"INSERT INTO meter_samples ({', '.join(_COPY_COLUMNS)}) VALUES "
                f"{', '.join([row_marks] * len(chunk))} ON CONFLICT ({', '.join(KEY_COLUMNS)}) "
                f"DO NOTHING RETURNING {', '.join(_TOUCH_COLUMNS)}",
                [value for row in chunk for value in row])
            new += cursor.fetchall()
    finally:
        cursor.close()
    return new


def _prepare_touched(connection: Connection) -> None:
    """An empty per-connection table of the buckets this transaction must recompute."""
    connection.execute(text(
        "CREATE TEMP TABLE IF NOT EXISTS touched_buckets (station_id VARCHAR(64) NOT NULL, "
        "evse_number INTEGER NOT NULL, transaction_id VARCHAR(64) NOT NULL, measurand "
        f"VARCHAR(40) NOT NULL, hour_us BIGINT NOT NULL, prev_us BIGINT, "
        f"PRIMARY KEY ({_BUCKET_KEY}))"))
    # PostgreSQL never vacuums temp tables: TRUNCATE, not DELETE, or dead rows pile up
    connection.execute(text("TRUNCATE touched_buckets" if connection.dialect.name ==
                            "postgresql" else "DELETE FROM touched_buckets"))


def _touch(connection: Connection, new: Iterable[tuple[Any, ...]]) -> None:
    """Note the buckets of newly stored register readings (station, EVSE, tx, measurand, us)."""
    touched = {(station, evse, tx, measurand, us // HOUR_US * HOUR_US)
               for station, evse, tx, measurand, us in new if measurand in REGISTERS}
    if touched:
        connection.execute(text(
            f"INSERT INTO touched_buckets ({_BUCKET_KEY}) VALUES (:station_id, :evse_number, "
            ":transaction_id, :measurand, :hour_us)"), [dict(zip(
                ("station_id", "evse_number", "transaction_id", "measurand", "hour_us"), key,
                strict=True)) for key in touched])


def _lock_sessions(connection: Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """PostgreSQL: serialise writers of the same sessions before anything is inserted.

    A bucket recomputed by two concurrent transactions would otherwise miss the other's
    readings.  The locks (per schema and session) are taken in one order, before any
    insert, so writers cannot deadlock.
    """
    keys = sorted({f"{row[0]}\x1f{row[1]}\x1f{row[2]}" for row in rows if row[4] in REGISTERS})
    if keys:
        connection.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended("
            "current_schema() || chr(31) || k, 0) AS h FROM unnest(%(keys)s::text[]) AS k "
            "ORDER BY h) ordered", {"keys": keys})


def _copy_in(connection: Connection, rows: list[tuple[object, ...]]) -> int:
    """PostgreSQL: COPY into a per-connection staging table, then insert what is new.

    Several times faster than multi-row INSERTs for large batches; same semantics (the
    unique key decides), same transaction.  The new register readings' buckets are noted.
    """
    columns = ", ".join(_COPY_COLUMNS)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS staging_samples AS SELECT {columns} "
                       "FROM meter_samples WITH NO DATA")
        cursor.execute("TRUNCATE staging_samples")
        with cursor.copy(f"COPY staging_samples ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"WITH new AS (INSERT INTO meter_samples ({columns}) SELECT {columns} FROM "
            f"staging_samples ON CONFLICT DO NOTHING RETURNING {', '.join(_TOUCH_COLUMNS)}), "
            f"touched AS (INSERT INTO touched_buckets ({_BUCKET_KEY}) "
            f"SELECT DISTINCT station_id, evse_number, "
            f"transaction_id, measurand, {_HOUR_OF} FROM new WHERE measurand IN "
            f"({_REGISTER_LIST}) ON CONFLICT DO NOTHING) SELECT count(*) FROM new")
        counted = cursor.fetchone()
        return int(counted[0]) if counted else 0
    finally:
        cursor.close()


_SAME_KEY = ("{a}.station_id = {b}.station_id AND {a}.evse_number = {b}.evse_number AND "
             "{a}.transaction_id = {b}.transaction_id AND {a}.measurand = {b}.measurand")

# The first bucket after each touched one: its first delta may now start from a new reading.
_NEXT_BUCKETS_SQL = f"""
INSERT INTO touched_buckets ({_BUCKET_KEY})
SELECT station_id, evse_number, transaction_id, measurand, next_us FROM (
  SELECT t.station_id, t.evse_number, t.transaction_id, t.measurand,
    (SELECT MIN(b.hour_us) FROM settlement_buckets b
     WHERE {_SAME_KEY.format(a="b", b="t")} AND b.hour_us > t.hour_us) AS next_us
  FROM touched_buckets t) n
WHERE next_us IS NOT NULL
ON CONFLICT DO NOTHING
"""

# The time of each touched bucket's reading before its hour (an index probe per bucket).
_PREV_READINGS_SQL = f"""
UPDATE touched_buckets SET prev_us = (
  SELECT q.measured_at_us FROM meter_samples q
  WHERE {_SAME_KEY.format(a="q", b="touched_buckets")}
    AND q.measured_at_us < touched_buckets.hour_us
  ORDER BY q.measured_at_us DESC LIMIT 1)
"""

# Recompute each touched bucket from its samples plus the readings at the latest time before
# the hour (the window orders them first, so the hour's first delta starts from them).
# CROSS JOIN keeps SQLite's join order: few touched buckets outside, the sample index inside.
_REFRESH_BUCKETS_SQL = f"""
INSERT INTO settlement_buckets ({_BUCKET_KEY}, prev_us, prev_value, first_us, last_us,
  readings, positive_wh, resets, max_inner_step_us, evse_id)
SELECT {_BUCKET_KEY},
  MAX(CASE WHEN is_prev = 1 THEN measured_at_us END),
  MAX(CASE WHEN is_prev = 0 AND lag_is_prev = 1 THEN lag_value END),
  MIN(CASE WHEN is_prev = 0 THEN measured_at_us END),
  MAX(CASE WHEN is_prev = 0 THEN measured_at_us END),
  SUM(1 - is_prev),
  SUM(CASE WHEN is_prev = 0 AND value - lag_value > 0 THEN value - lag_value ELSE 0 END),
  SUM(CASE WHEN is_prev = 0 AND value - lag_value < 0 THEN 1 ELSE 0 END),
  MAX(CASE WHEN is_prev = 0 AND lag_is_prev = 0 THEN measured_at_us - lag_us END),
  MAX(evse_id)
FROM (
  SELECT {_BUCKET_KEY}, measured_at_us, value, evse_id, is_prev,
    LAG(value) OVER w AS lag_value, LAG(measured_at_us) OVER w AS lag_us,
    LAG(is_prev) OVER w AS lag_is_prev
  FROM (
    SELECT t.station_id, t.evse_number, t.transaction_id, t.measurand, t.hour_us,
      s.measured_at_us, s.context, s.phase, s.value, s.evse_id, 0 AS is_prev
    FROM touched_buckets t CROSS JOIN meter_samples s WHERE {_SAME_KEY.format(a="s", b="t")}
      AND s.measured_at_us >= t.hour_us AND s.measured_at_us < t.hour_us + {HOUR_US}
    UNION ALL
    SELECT t.station_id, t.evse_number, t.transaction_id, t.measurand, t.hour_us,
      p.measured_at_us, p.context, p.phase, p.value, NULL, 1
    FROM touched_buckets t CROSS JOIN meter_samples p WHERE {_SAME_KEY.format(a="p", b="t")}
      AND p.measured_at_us = t.prev_us
  ) r
  WINDOW w AS (PARTITION BY {_SORT_KEY}
               ORDER BY is_prev DESC, measured_at_us, context, phase)
) x
WHERE true
GROUP BY {_SORT_KEY}
ON CONFLICT ({_BUCKET_KEY}) DO UPDATE SET prev_us = excluded.prev_us,
  prev_value = excluded.prev_value, first_us = excluded.first_us,
  last_us = excluded.last_us, readings = excluded.readings,
  positive_wh = excluded.positive_wh, resets = excluded.resets,
  max_inner_step_us = excluded.max_inner_step_us, evse_id = excluded.evse_id
"""


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


# Per session: the sums of the register steps (``delta_wh``, ``step_us``) of a window.
_STEP_SUMS = """
SELECT station_id, evse_number, transaction_id, MAX(evse_id) AS evse_id,
  SUM(CASE WHEN measurand = 'Energy.Active.Import.Register' AND delta_wh > 0
           THEN delta_wh ELSE 0 END) AS imported_wh,
  SUM(CASE WHEN measurand = 'Energy.Active.Export.Register' AND delta_wh > 0
           THEN delta_wh ELSE 0 END) AS exported_wh,
  MIN(measured_at_us) AS first_us, MAX(measured_at_us) AS last_us, COUNT(*) AS readings,
  SUM(CASE WHEN delta_wh < 0 THEN 1 ELSE 0 END) AS resets,
  SUM(CASE WHEN step_us > :max_gap_us THEN 1 ELSE 0 END) AS gaps
"""

# The pre-bucket settlement: one window over every register sample of the ledger.  Kept
# as the reference ``settle_sessions`` is tested against and the benchmark's baseline.
SETTLE_SQL = f"""
WITH steps AS (
  SELECT station_id, evse_number, transaction_id, measurand, measured_at_us, evse_id,
         value - LAG(value) OVER w AS delta_wh,
         measured_at_us - LAG(measured_at_us) OVER w AS step_us
  FROM meter_samples
  WHERE measurand IN ('Energy.Active.Import.Register', 'Energy.Active.Export.Register')
  WINDOW w AS (PARTITION BY station_id, evse_number, transaction_id, measurand
               ORDER BY measured_at_us, context)
)
{_STEP_SUMS}FROM steps
WHERE measured_at_us >= :from_us AND measured_at_us < :to_us
GROUP BY station_id, evse_number, transaction_id
ORDER BY station_id, evse_number, transaction_id
"""


# Partial sums per session, added up by _settle_sql: every branch yields these columns.
_PART_COLUMNS = ("station_id, evse_number, transaction_id, evse_id, imported_wh, exported_wh, "
                 "first_us, last_us, readings, resets, gaps")

# Whole hours: the buckets' sums; a step longer than the gap limit inside an hour is
# counted from the samples below (only for the rare hours whose longest step exceeds it,
# found by their index: the unary plus keeps SQLite off the hour index there).
_WHOLE_HOURS_SQL = """
SELECT station_id, evse_number, transaction_id, MAX(evse_id) AS evse_id,
  SUM(CASE WHEN measurand = 'Energy.Active.Import.Register' THEN positive_wh ELSE 0 END)
    AS imported_wh,
  SUM(CASE WHEN measurand = 'Energy.Active.Export.Register' THEN positive_wh ELSE 0 END)
    AS exported_wh,
  MIN(first_us) AS first_us, MAX(last_us) AS last_us, SUM(readings) AS readings,
  SUM(resets) AS resets,
  SUM(CASE WHEN first_us - prev_us > :max_gap_us THEN 1 ELSE 0 END) AS gaps
FROM settlement_buckets WHERE hour_us >= :whole_from_us AND hour_us < :whole_to_us
GROUP BY station_id, evse_number, transaction_id
"""

_INNER_GAPS_SQL = f"""
SELECT station_id, evse_number, transaction_id, CAST(NULL AS VARCHAR(64)) AS evse_id,
  0.0 AS imported_wh, 0.0 AS exported_wh, CAST(NULL AS BIGINT) AS first_us,
  CAST(NULL AS BIGINT) AS last_us, 0 AS readings, 0 AS resets,
  SUM(CASE WHEN step_us > :max_gap_us THEN 1 ELSE 0 END) AS gaps
FROM (
  SELECT b.station_id, b.evse_number, b.transaction_id,
    s.measured_at_us - LAG(s.measured_at_us) OVER (
      PARTITION BY b.station_id, b.evse_number, b.transaction_id, b.measurand, b.hour_us
      ORDER BY s.measured_at_us) AS step_us
  FROM settlement_buckets b CROSS JOIN meter_samples s WHERE {_SAME_KEY.format(a="s", b="b")}
    AND s.measured_at_us >= b.hour_us AND s.measured_at_us < b.hour_us + {HOUR_US}
    AND b.max_inner_step_us > :max_gap_us
    AND +b.hour_us >= :whole_from_us AND +b.hour_us < :whole_to_us
) x
GROUP BY station_id, evse_number, transaction_id
"""

# A part of one hour, [from, to): the raw window over that hour's samples, seeded with the
# reading before the hour that its bucket keeps.
_PART_HOUR_SQL = f"""
{_STEP_SUMS}FROM (
  SELECT r.*, value - LAG(value) OVER w AS delta_wh,
    measured_at_us - LAG(measured_at_us) OVER w AS step_us
  FROM (
    SELECT s.station_id, s.evse_number, s.transaction_id, s.measurand, s.measured_at_us,
      s.context, s.phase, s.value, s.evse_id, 0 AS is_prev
    FROM settlement_buckets b CROSS JOIN meter_samples s
    WHERE {_SAME_KEY.format(a="s", b="b")}
      AND s.measured_at_us >= b.hour_us AND s.measured_at_us < :part_to_us{{n}}
      AND b.hour_us = :part_hour_us{{n}}
    UNION ALL
    SELECT station_id, evse_number, transaction_id, measurand, prev_us, '', '', prev_value,
      NULL, 1
    FROM settlement_buckets WHERE hour_us = :part_hour_us{{n}} AND prev_us IS NOT NULL
  ) r
  WINDOW w AS (PARTITION BY station_id, evse_number, transaction_id, measurand
               ORDER BY is_prev DESC, measured_at_us, context, phase)
) x
WHERE measured_at_us >= :part_from_us{{n}} AND measured_at_us < :part_to_us{{n}}
GROUP BY station_id, evse_number, transaction_id
"""


def _settle_sql(whole: bool, parts: int) -> str:
    """The settlement query: whole-hour buckets and ``parts`` partial hours, summed."""
    branches = [_WHOLE_HOURS_SQL, _INNER_GAPS_SQL] if whole else []
    branches += [_PART_HOUR_SQL.replace("{n}", str(n)) for n in range(parts)]
    union = "\nUNION ALL\n".join(f"SELECT {_PART_COLUMNS} FROM ({branch}) p{n}"
                                  for n, branch in enumerate(branches))
    return f"""
SELECT station_id, evse_number, transaction_id, MAX(evse_id) AS evse_id,
  SUM(imported_wh) AS imported_wh, SUM(exported_wh) AS exported_wh,
  MIN(first_us) AS first_us, MAX(last_us) AS last_us, SUM(readings) AS readings,
  SUM(resets) AS resets, SUM(gaps) AS gaps
FROM ({union}) parts
GROUP BY station_id, evse_number, transaction_id
HAVING SUM(readings) > 0
ORDER BY station_id, evse_number, transaction_id
"""


def settle_sessions(ledger: Ledger, start: datetime, end: datetime, *,
                    max_gap_s: float = 900.0) -> list[SessionEnergy]:
    """Energy per session from register deltas whose later reading lies in [start, end).

    A delta belongs to the period of its later reading, so consecutive periods add up
    exactly: nothing is lost or counted twice at a boundary.  Whole UTC hours come from
    the settlement buckets, the partial hours at either edge from their samples; the
    result equals ``settle_sessions_raw`` (energies up to float summation order).
    """
    from_us, to_us_ = to_us(start), to_us(end)
    if to_us_ <= from_us:
        return []
    whole_from = -(-from_us // HOUR_US) * HOUR_US  # first whole hour inside the period
    whole_to = to_us_ // HOUR_US * HOUR_US
    params: dict[str, int] = {"max_gap_us": int(max_gap_s * 1_000_000)}
    pieces: list[tuple[int, int, int]] = []  # (hour, from, to) of partial hours
    if whole_from > whole_to:  # the period lies inside one hour
        pieces.append((whole_to, from_us, to_us_))
    else:
        if from_us < whole_from:
            pieces.append((whole_from - HOUR_US, from_us, whole_from))
        if whole_to < to_us_:
            pieces.append((whole_to, whole_to, to_us_))
    whole = whole_from < whole_to
    if whole:
        params.update(whole_from_us=whole_from, whole_to_us=whole_to)
    for n, (hour, lo, hi) in enumerate(pieces):
        params.update({f"part_hour_us{n}": hour, f"part_from_us{n}": lo, f"part_to_us{n}": hi})
    if not whole and not pieces:
        return []
    with ledger.engine.connect() as connection:
        rows = connection.execute(text(_settle_sql(whole, len(pieces))), params).all()
    return _energies(rows)


def settle_sessions_raw(ledger: Ledger, start: datetime, end: datetime, *,
                        max_gap_s: float = 900.0) -> list[SessionEnergy]:
    """``settle_sessions`` from one window over every register sample (no buckets).

    The reference the bucket settlement is tested against, and the benchmark's baseline.
    """
    with ledger.engine.connect() as connection:
        rows = connection.execute(text(SETTLE_SQL), {
            "from_us": to_us(start), "to_us": to_us(end),
            "max_gap_us": int(max_gap_s * 1_000_000)}).all()
    return _energies(rows)


def _energies(rows: Sequence[Any]) -> list[SessionEnergy]:
    """Settlement rows (in ``_PART_COLUMNS`` order) as ``SessionEnergy``s."""
    return [SessionEnergy(
        station_id=station, evse_number=int(evse), transaction_id=tx or None, evse_id=evse_id,
        imported_kwh=float(imported_wh or 0.0) / 1000.0,
        exported_kwh=float(exported_wh or 0.0) / 1000.0,
        first_reading=from_us(int(first_us)), last_reading=from_us(int(last_us)),
        readings=int(readings), resets=int(resets or 0), gaps=int(gaps or 0))
        for (station, evse, tx, evse_id, imported_wh, exported_wh, first_us, last_us, readings,
             resets, gaps) in rows]
