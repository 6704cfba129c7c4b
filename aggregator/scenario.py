"""``Scenario``: one planning case (grid tree, EVSEs, sessions, limits, prices, demand
charges, loads)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from aggregator.model import (
    DemandCharge,
    GridConstraint,
    GridTree,
    ModelError,
    NodeLoad,
    PriceSignal,
    Session,
    require_utc,
    sessions_by_evse,
)


@dataclass(frozen=True)
class PlanSettings:
    """Objective weights and defaults (currency per kWh; the scenario's currency)."""

    degradation_cost_per_kwh: float = 0.02
    unmet_penalty_per_kwh: float = 10.0
    setpoint_penalty_per_kwh: float = 5.0
    default_import_price_per_kwh: float = 0.25
    default_export_price_per_kwh: float = 0.0

    def __post_init__(self) -> None:
        for name in ("degradation_cost_per_kwh", "unmet_penalty_per_kwh",
                     "setpoint_penalty_per_kwh"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 <= value < float("inf")):
                raise ModelError(name, f"must be a finite number >= 0, got {value!r}")
        for name in ("default_import_price_per_kwh", "default_export_price_per_kwh"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    abs(value) < float("inf")):
                raise ModelError(name, f"must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Scenario:
    """A planning horizon of ``n_intervals`` intervals from ``start`` and what lives in it."""

    name: str
    start: datetime
    interval: timedelta
    n_intervals: int
    tree: GridTree
    sessions: tuple[Session, ...] = ()
    constraints: tuple[GridConstraint, ...] = ()
    prices: tuple[PriceSignal, ...] = ()
    loads: tuple[NodeLoad, ...] = ()
    settings: PlanSettings = field(default_factory=PlanSettings)
    description: str = ""
    demand_charges: tuple[DemandCharge, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", require_utc(self.start, "start"))
        if not isinstance(self.interval, timedelta) or self.interval <= timedelta(0):
            raise ModelError("interval", "must be a positive duration")
        if isinstance(self.n_intervals, bool) or not isinstance(self.n_intervals, int) or not (
                1 <= self.n_intervals <= 10_000):
            raise ModelError("n_intervals", f"must be an integer in 1..10000, "
                             f"got {self.n_intervals!r}")
        evse_ids = {evse.evse_id for evse in self.tree.evses}
        seen: set[str] = set()
        for session in self.sessions:
            if session.evse_id not in evse_ids:
                raise ModelError("evse_id", f"session {session.session_id!r} names unknown "
                                 f"EVSE {session.evse_id!r}")
            if session.session_id in seen:
                raise ModelError("session_id", f"duplicate session {session.session_id!r}")
            seen.add(session.session_id)
        sessions_by_evse(self.sessions)
        for constraint in self.constraints:
            if not self.tree.can_constrain(constraint.node_id):
                raise ModelError("node_id", f"constraint from {constraint.source_ref!r} names "
                                 f"unknown node {constraint.node_id!r}")
        for load in self.loads:
            if not self.tree.has_node(load.node_id):
                raise ModelError("node_id", f"load names unknown node {load.node_id!r}")
        for charge in self.demand_charges:
            if not self.tree.has_node(charge.node_id):
                raise ModelError("node_id", f"demand charge from {charge.source_ref!r} names "
                                 f"unknown grid node {charge.node_id!r}")

    @property
    def end(self) -> datetime:
        return self.start + self.n_intervals * self.interval


def shift_scenario(scenario: Scenario, delta: timedelta) -> Scenario:
    """The same scenario moved by ``delta`` in time (to replay or demo it at another date)."""

    def moved(item: Any, *names: str) -> Any:
        changes = {name: getattr(item, name) + delta for name in names
                   if getattr(item, name) is not None}
        return replace(item, **changes)

    return replace(
        scenario, start=scenario.start + delta,
        sessions=tuple(moved(s, "arrival", "departure") for s in scenario.sessions),
        constraints=tuple(moved(c, "start", "end", "received_at", "expires_at")
                          for c in scenario.constraints),
        prices=tuple(moved(p, "start", "end") for p in scenario.prices),
        loads=tuple(moved(load, "start", "end") for load in scenario.loads),
        demand_charges=tuple(moved(d, "start", "end", "received_at")
                             for d in scenario.demand_charges))
