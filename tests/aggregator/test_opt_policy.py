"""Opt decisions: always in, or in only when the fleet can meet the event."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aggregator.model import GridConstraint
from aggregator.opt_policy import FeasibilityPolicy, OptDecision, always_opt_in
from aggregator.scenario import Scenario

EVENING = datetime(2026, 11, 20, 17, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    constraints: tuple[GridConstraint, ...]


def cap(node: str, kw: float, hours: float) -> GridConstraint:
    return GridConstraint(node_id=node, start=EVENING, end=EVENING + timedelta(hours=hours),
                          source="openadr", source_ref=f"test cap {kw} kW",
                          received_at=EVENING - timedelta(hours=1), import_max_kw=kw)


def test_always_opt_in_says_why() -> None:
    decision = asyncio.run(always_opt_in(Event(())))
    assert decision.opt_in and "always" in decision.reason


def test_a_mild_event_is_feasible(shipped_scenario: Scenario) -> None:
    policy = FeasibilityPolicy(snapshot=lambda: shipped_scenario, tolerance_kwh=0.5)
    decision = asyncio.run(policy(Event((cap("site-a", 100.0, 1.0),))))
    assert decision.opt_in, decision.reason
    assert decision.reason.startswith("feasible: 0.0 kWh")


def test_an_event_that_strands_a_driver_is_refused_with_the_shortfall(
        shipped_scenario: Scenario) -> None:
    session = shipped_scenario.sessions[0]
    wanted_kwh = session.energy_target_kwh - session.energy_initial_kwh
    outage = GridConstraint(node_id=session.evse_id, start=session.arrival,
                            end=session.departure, source="openadr", source_ref="evse off",
                            received_at=session.arrival, import_max_kw=0.0)
    decision = FeasibilityPolicy(snapshot=lambda: shipped_scenario).decide((outage,))
    assert not decision.opt_in
    assert decision.reason == (f"the event would leave {wanted_kwh:.1f} kWh undelivered "
                               "(tolerance 0.5 kWh)")


def test_limits_below_the_base_load_have_no_feasible_plan(shipped_scenario: Scenario) -> None:
    decision = FeasibilityPolicy(snapshot=lambda: shipped_scenario).decide(
        (cap("feeder-1", 0.0, 18.0),))
    assert decision == OptDecision(False, "no feasible plan under the event's limits")


def test_an_event_on_an_unknown_node_is_refused(shipped_scenario: Scenario) -> None:
    decision = FeasibilityPolicy(snapshot=lambda: shipped_scenario).decide(
        (cap("substation-x", 10.0, 1.0),))
    assert not decision.opt_in and "substation-x" in decision.reason
