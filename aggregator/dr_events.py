"""The DR event journal in the ledger: every event modification a DSO sent, and our answer.

Append-only and idempotent on (source, event id, modification number): a VTN that sends
the same modification again, or two writers recording it, store it once.  The limits and
prices are kept as JSON with their provenance, so a settlement per event can show what was
asked, when it was received, and whether gridflex took part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from aggregator.ledger import Ledger, from_us, metadata, to_us
from aggregator.model import DemandCharge, GridConstraint, PriceSignal, require_utc

dr_events = Table(
    "dr_events", metadata,  # the ledger's: one schema, checked against the migrations
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("modification_number", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("program", String(256), nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),
    Column("test_event", Boolean, nullable=False),
    Column("opt_in", Boolean, nullable=False),
    Column("applied", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("limits_json", Text, nullable=False),
    Column("prices_json", Text, nullable=False),
    Column("demand_charges_json", Text, nullable=False, server_default="[]"),
    UniqueConstraint("source", "event_id", "modification_number",
                     name="uq_dr_events_natural_key"),
)
KEY = ["source", "event_id", "modification_number"]


@dataclass(frozen=True, slots=True)
class DrEvent:
    """One modification of a DR event as received, with the decision and what was applied."""

    source: str
    event_id: str
    modification_number: int
    status: str
    program: str
    received_at: datetime
    start: datetime
    end: datetime
    test_event: bool
    opt_in: bool
    applied: bool
    reason: str
    limits: tuple[GridConstraint, ...] = ()
    prices: tuple[PriceSignal, ...] = ()
    demand_charges: tuple[DemandCharge, ...] = ()

    def __post_init__(self) -> None:
        for name in ("received_at", "start", "end"):
            object.__setattr__(self, name, require_utc(getattr(self, name), name))


def record_event(ledger: Ledger, event: DrEvent) -> bool:
    """Store ``event``; False when that modification was already journaled."""
    row = {
        "source": event.source, "event_id": event.event_id,
        "modification_number": event.modification_number, "status": event.status,
        "program": event.program, "received_at_us": to_us(event.received_at),
        "start_us": to_us(event.start), "end_us": to_us(event.end),
        "test_event": event.test_event, "opt_in": event.opt_in, "applied": event.applied,
        "reason": event.reason, "limits_json": json.dumps([_limit(c) for c in event.limits]),
        "prices_json": json.dumps([_price(p) for p in event.prices]),
        "demand_charges_json": json.dumps([_charge(c) for c in event.demand_charges])}
    insert = pg_insert if ledger.engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(dr_events).on_conflict_do_nothing(index_elements=KEY).returning(
        dr_events.c.id)
    with ledger.engine.begin() as connection:
        return len(connection.execute(statement, [row]).all()) == 1


def journal(ledger: Ledger, *, event_id: str | None = None,
            source: str | None = None) -> list[DrEvent]:
    """The journaled modifications, oldest first, optionally of one event or source."""
    query = select(dr_events).order_by(dr_events.c.received_at_us, dr_events.c.id)
    if event_id is not None:
        query = query.where(dr_events.c.event_id == event_id)
    if source is not None:
        query = query.where(dr_events.c.source == source)
    with ledger.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [DrEvent(
        source=row.source, event_id=row.event_id,
        modification_number=int(row.modification_number), status=row.status,
        program=row.program, received_at=from_us(int(row.received_at_us)),
        start=from_us(int(row.start_us)), end=from_us(int(row.end_us)),
        test_event=bool(row.test_event), opt_in=bool(row.opt_in), applied=bool(row.applied),
        reason=row.reason,
        limits=tuple(_limit_back(item) for item in json.loads(row.limits_json)),
        prices=tuple(_price_back(item) for item in json.loads(row.prices_json)),
        demand_charges=tuple(_charge_back(item)
                             for item in json.loads(row.demand_charges_json)))
        for row in rows]


def _limit(c: GridConstraint) -> dict[str, Any]:
    return {"node_id": c.node_id, "start_us": to_us(c.start), "end_us": to_us(c.end),
            "source": c.source, "source_ref": c.source_ref,
            "received_at_us": to_us(c.received_at), "import_max_kw": c.import_max_kw,
            "export_max_kw": c.export_max_kw, "setpoint_kw": c.setpoint_kw,
            "priority": c.priority,
            "expires_at_us": None if c.expires_at is None else to_us(c.expires_at)}


def _limit_back(item: dict[str, Any]) -> GridConstraint:
    expires = item["expires_at_us"]
    return GridConstraint(
        node_id=item["node_id"], start=from_us(item["start_us"]), end=from_us(item["end_us"]),
        source=item["source"], source_ref=item["source_ref"],
        received_at=from_us(item["received_at_us"]), import_max_kw=item["import_max_kw"],
        export_max_kw=item["export_max_kw"], setpoint_kw=item["setpoint_kw"],
        priority=item["priority"], expires_at=None if expires is None else from_us(expires))


def _price(p: PriceSignal) -> dict[str, Any]:
    return {"start_us": to_us(p.start), "end_us": to_us(p.end),
            "import_price_per_kwh": p.import_price_per_kwh,
            "export_price_per_kwh": p.export_price_per_kwh, "source": p.source}


def _price_back(item: dict[str, Any]) -> PriceSignal:
    return PriceSignal(start=from_us(item["start_us"]), end=from_us(item["end_us"]),
                       import_price_per_kwh=item["import_price_per_kwh"],
                       export_price_per_kwh=item["export_price_per_kwh"],
                       source=item["source"])


def _charge(c: DemandCharge) -> dict[str, Any]:
    return {"node_id": c.node_id, "start_us": to_us(c.start), "end_us": to_us(c.end),
            "price_per_kw": c.price_per_kw, "source": c.source, "source_ref": c.source_ref,
            "received_at_us": to_us(c.received_at)}


def _charge_back(item: dict[str, Any]) -> DemandCharge:
    return DemandCharge(node_id=item["node_id"], start=from_us(item["start_us"]),
                        end=from_us(item["end_us"]), price_per_kw=item["price_per_kw"],
                        source=item["source"], source_ref=item["source_ref"],
                        received_at=from_us(item["received_at_us"]))


def events_in(ledger: Ledger, start: datetime, end: datetime) -> Sequence[DrEvent]:
    """The latest applied modification of every event overlapping ``[start, end)``."""
    latest: dict[tuple[str, str], DrEvent] = {}
    for event in journal(ledger):
        latest[(event.source, event.event_id)] = event  # journal is oldest first
    return [e for e in latest.values() if e.applied and e.start < end and e.end > start]
