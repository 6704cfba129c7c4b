"""The plan journal: each schedule the controller made, what triggered it, and the outcome.

A plan record keeps the triggers (with when they were seen), the solver's verdict, the
planned kW per EVSE, every station's answer, the fallback taken if any, and the latency
from the first trigger to the last station's answer.  Stored in the ledger, idempotent on
the plan id, so an operator can always answer "what did gridflex tell that station, and why".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
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

plans = Table(
    "plans", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("plan_id", String(64), nullable=False),
    Column("planned_at_us", BigInteger, nullable=False),
    Column("horizon_start_us", BigInteger, nullable=False),
    Column("interval_s", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("objective", Float),  # NULL: no objective (a failed solve)
    Column("solve_s", Float, nullable=False),
    Column("dispatch_s", Float, nullable=False),
    Column("latency_s", Float, nullable=False),
    Column("sessions", Integer, nullable=False),
    Column("unmet_kwh", Float, nullable=False),
    Column("fallback", Text, nullable=False),
    Column("triggers_json", Text, nullable=False),
    Column("power_json", Text, nullable=False),
    Column("deliveries_json", Text, nullable=False),
    UniqueConstraint("plan_id", name="uq_plans_plan_id"),
)


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why the controller re-plans: ``kind`` (constraint, prices, link, session_start,
    session_end, needs, deviation, rejected, periodic, startup) and a readable detail.
    ``at`` is on the service clock; ``seen_s`` on the monotonic clock, for latencies."""

    kind: str
    detail: str
    at: datetime
    seen_s: float


@dataclass(frozen=True, slots=True)
class StationAnswer:
    """One EVSE's (or station cap's) delivery outcome as journaled."""

    evse_id: str
    station_id: str | None
    status: str
    follows: bool
    fallback: str | None
    detail: str


@dataclass(frozen=True)
class PlanRecord:
    """One control decision: the plan, why it was made and what the stations answered."""

    plan_id: str
    planned_at: datetime
    horizon_start: datetime
    interval: timedelta
    status: str
    objective: float
    solve_s: float
    dispatch_s: float
    latency_s: float  # first trigger seen -> every station answered
    sessions: int
    unmet_kwh: float
    fallback: str  # "" or why a safe plan replaced the optimiser's
    triggers: tuple[Trigger, ...]
    power_kw: dict[str, list[float]]  # EVSE id -> kW per interval from horizon_start
    answers: tuple[StationAnswer, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (the operator API's)."""
        return {
            "plan_id": self.plan_id, "planned_at": self.planned_at.isoformat(),
            "horizon_start": self.horizon_start.isoformat(),
            "interval_s": int(self.interval.total_seconds()), "status": self.status,
            "objective": self.objective if math.isfinite(self.objective) else None,
            "solve_s": self.solve_s,
            "dispatch_s": self.dispatch_s, "latency_s": self.latency_s,
            "sessions": self.sessions, "unmet_kwh": self.unmet_kwh,
            "fallback": self.fallback,
            "triggers": [{"kind": t.kind, "detail": t.detail, "at": t.at.isoformat()}
                         for t in self.triggers],
            "power_kw": self.power_kw,
            "answers": [{"evse_id": a.evse_id, "station_id": a.station_id, "status": a.status,
                         "follows": a.follows, "fallback": a.fallback, "detail": a.detail}
                        for a in self.answers]}


def record_plan(ledger: Ledger, plan: PlanRecord) -> bool:
    """Journal ``plan``; False when that plan id is already there."""
    data = plan.to_json()
    row = {
        "plan_id": plan.plan_id, "planned_at_us": to_us(plan.planned_at),
        "horizon_start_us": to_us(plan.horizon_start),
        "interval_s": data["interval_s"], "status": plan.status,
        "objective": data["objective"], "solve_s": plan.solve_s,
        "dispatch_s": plan.dispatch_s, "latency_s": plan.latency_s,
        "sessions": plan.sessions, "unmet_kwh": plan.unmet_kwh, "fallback": plan.fallback,
        "triggers_json": json.dumps(data["triggers"]),
        "power_json": json.dumps(plan.power_kw), "deliveries_json": json.dumps(data["answers"])}
    insert = pg_insert if ledger.engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(plans).on_conflict_do_nothing(index_elements=["plan_id"]).returning(
        plans.c.id)
    with ledger.engine.begin() as connection:
        return len(connection.execute(statement, [row]).all()) == 1


def journaled_plans(ledger: Ledger, *, since: datetime | None = None,
                    limit: int | None = None) -> list[PlanRecord]:
    """Journaled plans, oldest first (the newest ``limit`` of them when given)."""
    query = select(plans).order_by(plans.c.planned_at_us.desc(), plans.c.id.desc())
    if since is not None:
        query = query.where(plans.c.planned_at_us >= to_us(since))
    if limit is not None:
        query = query.limit(limit)
    with ledger.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [PlanRecord(
        plan_id=row.plan_id, planned_at=from_us(int(row.planned_at_us)),
        horizon_start=from_us(int(row.horizon_start_us)),
        interval=timedelta(seconds=int(row.interval_s)), status=row.status,
        objective=float("nan") if row.objective is None else float(row.objective),
        solve_s=float(row.solve_s),
        dispatch_s=float(row.dispatch_s), latency_s=float(row.latency_s),
        sessions=int(row.sessions), unmet_kwh=float(row.unmet_kwh), fallback=row.fallback,
        triggers=tuple(Trigger(t["kind"], t["detail"], datetime.fromisoformat(t["at"]), 0.0)
                       for t in json.loads(row.triggers_json)),
        power_kw=json.loads(row.power_json),
        answers=tuple(StationAnswer(**a) for a in json.loads(row.deliveries_json)))
        for row in reversed(rows)]
