"""The session and settlement journals in the ledger: what stations said, what we issued.

``session_events`` keeps every start, end and EV-needs message of a charging session once
(idempotent on station, EVSE, transaction, kind and the station's timestamp), so a session
can be shown later as the stations reported it.  ``settlement_runs`` and ``settlement_rows``
keep every ``gridflex settle`` run with its hash-chained rows, append-only, so a settlement
issued to a CPO or DSO can be reproduced and compared with the file they hold.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from aggregator.export import verify_table
from aggregator.ledger import Ledger, from_us, metadata, to_us
from aggregator.model import require_utc

if TYPE_CHECKING:
    from adapters.ocpp.csms import StationEvent

session_events = Table(
    "session_events", metadata,  # the ledger's: one schema, checked against the migrations
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("station_id", String(64), nullable=False),
    Column("evse_number", Integer, nullable=False),
    Column("transaction_id", String(64), nullable=False),  # "" when the station gave none
    Column("evse_id", String(64)),  # NULL: an EVSE gridflex does not plan
    Column("kind", String(16), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Column("needs_json", Text),  # "needs" only: the EV's charging_needs as received
    UniqueConstraint("station_id", "evse_number", "transaction_id", "kind", "at_us",
                     name="uq_session_events_natural_key"),
    Index("ix_session_events_at_us", "at_us"),
)
SESSION_KEY = ["station_id", "evse_number", "transaction_id", "kind", "at_us"]
SESSION_KINDS = ("started", "ended", "needs")

settlement_runs = Table(
    "settlement_runs", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("kind", String(16), nullable=False),  # "sessions" or "event"
    Column("created_at_us", BigInteger, nullable=False),
    Column("period_start_us", BigInteger),  # the settled window (an event's own for "event")
    Column("period_end_us", BigInteger),
    Column("event_source", String(32)),  # "event" runs: which DR event and modification
    Column("event_id", String(128)),
    Column("modification_number", Integer),
    Column("params_json", Text, nullable=False),
    Column("columns_json", Text, nullable=False),  # the hashed columns, in chain order
    Column("row_count", Integer, nullable=False),
    Column("seal", String(64), nullable=False),  # the last row's hash ("" for no rows)
    UniqueConstraint("run_id", name="uq_settlement_runs_run_id"),
)

settlement_rows = Table(
    "settlement_rows", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("run_id", String(36), ForeignKey("settlement_runs.run_id",
                                            name="fk_settlement_rows_run_id"),
           nullable=False),
    Column("position", Integer, nullable=False),
    Column("row_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("run_id", "position", name="uq_settlement_rows_run_position"),
)

CHAIN_COLUMNS = ("prev_hash", "row_hash")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One charging session as its stations reported it (times UTC, the station's clock).

    ``started_at`` is None when only later events were journaled; ``ended_at`` is None
    while the session is open.  ``needs`` is the EV's last charging_needs, verbatim.
    """

    station_id: str
    evse_number: int
    transaction_id: str
    evse_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    needs: dict[str, Any] | None
    needs_at: datetime | None


def record_session_event(ledger: Ledger, event: StationEvent, evse_id: str | None,
                         received_at: datetime) -> bool:
    """Journal a session's started/ended/needs ``event``; False when it was already there
    (or is not a session event: connected, disconnected).

    ``at`` is the station's timestamp, else when the needs arrived, else ``received_at``.
    """
    if event.kind not in SESSION_KINDS:
        return False
    received_at = require_utc(received_at, "received_at")
    at = event.at or (event.needs.received_at if event.needs is not None else None) \
        or received_at
    needs = None
    if event.kind == "needs" and event.needs is not None:
        needs = json.dumps(event.needs.raw)
    row = {"station_id": event.station_id, "evse_number": event.evse_number,
           "transaction_id": event.transaction_id or "", "evse_id": evse_id,
           "kind": event.kind, "at_us": to_us(at), "received_at_us": to_us(received_at),
           "needs_json": needs}
    insert = pg_insert if ledger.engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(session_events).on_conflict_do_nothing(
        index_elements=SESSION_KEY).returning(session_events.c.id)
    with ledger.engine.begin() as connection:
        return len(connection.execute(statement, [row]).all()) == 1


def sessions(ledger: Ledger, start: datetime, end: datetime) -> list[SessionRecord]:
    """Sessions overlapping ``[start, end)`` (open ones too), ordered by start.

    A needs message without a transaction id goes to the session open on that EVSE then.
    """
    start_us, end_us = to_us(require_utc(start, "start")), to_us(require_utc(end, "end"))
    query = select(session_events).where(or_(  # and the later ends of those sessions
        session_events.c.at_us < end_us,
        and_(session_events.c.kind == "ended", session_events.c.at_us > start_us))).order_by(
        session_events.c.at_us, session_events.c.id)
    with ledger.engine.connect() as connection:
        rows = connection.execute(query).all()
    folded: dict[tuple[str, int, str], dict[str, Any]] = {}
    open_on: dict[tuple[str, int], tuple[str, int, str]] = {}  # EVSE -> its open session
    for row in rows:
        evse = (row.station_id, int(row.evse_number))
        key = (*evse, row.transaction_id)
        if row.kind == "needs" and not row.transaction_id:
            if evse not in open_on:
                continue  # no session to attach it to
            key = open_on[evse]
        if not key[2]:
            continue  # a start or end without a transaction names no session
        record = folded.setdefault(key, {"evse_id": None, "started_us": None,
                                         "ended_us": None, "needs": None, "needs_us": None,
                                         "in_window": False})
        record["in_window"] = record["in_window"] or int(row.at_us) < end_us
        record["evse_id"] = row.evse_id or record["evse_id"]
        if row.kind == "started":
            if record["started_us"] is None:  # a repeated Started keeps the first
                record["started_us"] = int(row.at_us)
            if record["ended_us"] is None:
                open_on[evse] = key
        elif row.kind == "ended":
            record["ended_us"] = int(row.at_us)
            if open_on.get(evse) == key:
                del open_on[evse]
        else:
            record["needs"], record["needs_us"] = row.needs_json, int(row.at_us)
    result = [SessionRecord(
        station_id=key[0], evse_number=key[1], transaction_id=key[2],
        evse_id=r["evse_id"],
        started_at=None if r["started_us"] is None else from_us(r["started_us"]),
        ended_at=None if r["ended_us"] is None else from_us(r["ended_us"]),
        needs=None if r["needs"] is None else json.loads(r["needs"]),
        needs_at=None if r["needs_us"] is None else from_us(r["needs_us"]))
        for key, r in folded.items()
        if r["in_window"] and (r["ended_us"] is None or r["ended_us"] > start_us)]
    return sorted(result, key=lambda s: (s.started_at or from_us(0), s.station_id,
                                         s.evse_number, s.transaction_id))


@dataclass(frozen=True)
class SettlementRun:
    """One recorded ``gridflex settle`` run: what was settled, how, and its rows back.

    ``table`` is the issued table (its ``columns`` plus ``prev_hash`` and ``row_hash``),
    so ``verify_table(run.table, run.columns)`` checks it as it was issued.
    """

    run_id: str
    kind: str
    created_at: datetime
    period_start: datetime | None
    period_end: datetime | None
    event_source: str | None
    event_id: str | None
    modification_number: int | None
    params: dict[str, Any]
    columns: tuple[str, ...]
    row_count: int
    seal: str
    table: pd.DataFrame


def record_settlement(ledger: Ledger, kind: Literal["sessions", "event"],
                      table: pd.DataFrame, *, params: Mapping[str, Any],
                      period: tuple[datetime, datetime] | None = None,
                      event: tuple[str, str, int] | None = None,
                      created_at: datetime | None = None,
                      run_id: str | None = None) -> str:
    """Store a settlement run and its hash-chained rows in one transaction; its run id.

    ``event`` is (source, event id, modification number).  The chain must be intact (a
    broken table is refused, ValueError) and a run id is never reused: runs only append.
    """
    if kind not in ("sessions", "event"):
        raise ValueError(f"kind: 'sessions' or 'event', got {kind!r}")
    columns = [str(c) for c in table.columns if c not in CHAIN_COLUMNS]
    if any(c not in table.columns for c in CHAIN_COLUMNS):
        raise ValueError("table: no hash chain (prev_hash, row_hash)")
    broken = verify_table(table, columns)
    if broken is not None:
        raise ValueError(f"table: the hash chain breaks at row {broken}")
    run_id = run_id or str(uuid.uuid4())
    created_at = require_utc(created_at or datetime.now(UTC), "created_at")
    records = table.to_dict("records")
    if period is not None:
        period = (require_utc(period[0], "period start"), require_utc(period[1], "period end"))
    run = {"run_id": run_id, "kind": kind, "created_at_us": to_us(created_at),
           "period_start_us": None if period is None else to_us(period[0]),
           "period_end_us": None if period is None else to_us(period[1]),
           "event_source": None if event is None else event[0],
           "event_id": None if event is None else event[1],
           "modification_number": None if event is None else int(event[2]),
           "params_json": json.dumps(_json_ready(dict(params)), sort_keys=True),
           "columns_json": json.dumps(columns), "row_count": len(records),
           "seal": str(records[-1]["row_hash"]) if records else ""}
    rows = [{"run_id": run_id, "position": position,
             "row_json": json.dumps({c: _json_ready(record[c]) for c in columns},
                                    allow_nan=False),
             "prev_hash": str(record["prev_hash"]), "row_hash": str(record["row_hash"])}
            for position, record in enumerate(records)]
    with ledger.engine.begin() as connection:  # the run and its rows, or nothing
        if connection.execute(select(settlement_runs.c.id).where(
                settlement_runs.c.run_id == run_id)).first() is not None:
            raise ValueError(f"run_id: {run_id} is already recorded (runs are never "
                             f"overwritten)")
        connection.execute(settlement_runs.insert(), [run])  # a racing twin: IntegrityError
        if rows:
            connection.execute(settlement_rows.insert(), rows)
    return run_id


def settlement_run(ledger: Ledger, run_id: str) -> SettlementRun:
    """The recorded run ``run_id`` with its table as issued; KeyError when unknown."""
    with ledger.engine.connect() as connection:
        run = connection.execute(select(settlement_runs).where(
            settlement_runs.c.run_id == run_id)).first()
        if run is None:
            raise KeyError(run_id)
        rows = connection.execute(select(settlement_rows).where(
            settlement_rows.c.run_id == run_id).order_by(settlement_rows.c.position)).all()
    columns = tuple(json.loads(run.columns_json))
    records = [{**json.loads(row.row_json), "prev_hash": row.prev_hash,
                "row_hash": row.row_hash} for row in rows]
    return SettlementRun(
        run_id=run.run_id, kind=run.kind, created_at=from_us(int(run.created_at_us)),
        period_start=None if run.period_start_us is None else from_us(int(run.period_start_us)),
        period_end=None if run.period_end_us is None else from_us(int(run.period_end_us)),
        event_source=run.event_source, event_id=run.event_id,
        modification_number=None if run.modification_number is None
        else int(run.modification_number),
        params=json.loads(run.params_json), columns=columns, row_count=int(run.row_count),
        seal=run.seal, table=pd.DataFrame(records, columns=[*columns, *CHAIN_COLUMNS]))


def settlement_runs_of(ledger: Ledger, kind: str | None = None) -> list[tuple[str, datetime]]:
    """(run id, created at) of every recorded run, oldest first, optionally of one kind."""
    query = select(settlement_runs.c.run_id, settlement_runs.c.created_at_us).order_by(
        settlement_runs.c.created_at_us, settlement_runs.c.id)
    if kind is not None:
        query = query.where(settlement_runs.c.kind == kind)
    with ledger.engine.connect() as connection:
        return [(row.run_id, from_us(int(row.created_at_us)))
                for row in connection.execute(query)]


def _json_ready(value: Any) -> Any:
    """A table cell or parameter as plain JSON: numpy scalars as Python, NaN / NA as null,
    infinities and other values as the text export hashes (the canonical row is unchanged)."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return repr(float(value)) if math.isinf(value) else float(value)  # JSON has no inf
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (int, str)):
        return value
    return str(value)  # as export's canonical row writes it (a datetime: str(), not ISO)

