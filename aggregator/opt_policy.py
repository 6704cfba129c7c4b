"""Whether to take part in a DR event: always, or only when the fleet can meet it.

The adapters ask; the aggregator answers.  ``FeasibilityPolicy`` plans the current fleet twice,
without and with the event's limits, and opts in only when the event costs no more than
``tolerance_kwh`` of energy the drivers asked for (the plan stays feasible and they still
leave charged).  Every answer carries the reason that is logged and kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aggregator.model import GridConstraint
from aggregator.planning import build_problem
from aggregator.scenario import Scenario
from optimizer import solve


@dataclass(frozen=True, slots=True)
class OptDecision:
    """The aggregator's answer to an event, with the reason that is logged and kept."""

    opt_in: bool
    reason: str


class HasConstraints(Protocol):
    """What a policy needs of an event: the limits it would put in force."""

    @property
    def constraints(self) -> Sequence[GridConstraint]: ...


async def always_opt_in(event: HasConstraints) -> OptDecision:
    """The default policy: take part in every event."""
    return OptDecision(True, "policy: always opt in")


@dataclass
class FeasibilityPolicy:
    """Opt in when planning the fleet under the event's limits loses at most ``tolerance_kwh``."""

    snapshot: Callable[[], Scenario]
    tolerance_kwh: float = 0.5

    async def __call__(self, event: HasConstraints) -> OptDecision:
        return await asyncio.to_thread(self.decide, tuple(event.constraints))

    def decide(self, constraints: Sequence[GridConstraint]) -> OptDecision:
        scenario = self.snapshot()
        unknown = sorted({c.node_id for c in constraints
                          if not scenario.tree.can_constrain(c.node_id)})
        if unknown:
            return OptDecision(False, f"event names grid nodes gridflex does not know: {unknown}")
        without = _unmet_kwh(scenario)
        if without is None:
            return OptDecision(False, "the fleet has no feasible plan even without the event")
        with_event = _unmet_kwh(dataclasses.replace(
            scenario, constraints=scenario.constraints + tuple(constraints)))
        if with_event is None:
            return OptDecision(False, "no feasible plan under the event's limits")
        lost = with_event - without
        if lost > self.tolerance_kwh:
            return OptDecision(False, f"the event would leave {lost:.1f} kWh undelivered "
                                      f"(tolerance {self.tolerance_kwh:g} kWh)")
        return OptDecision(True, f"feasible: {lost:.1f} kWh undelivered by the event "
                                 f"(tolerance {self.tolerance_kwh:g} kWh)")


def _unmet_kwh(scenario: Scenario) -> float | None:
    problem, _ = build_problem(scenario)
    solution = solve(problem)
    return float(solution.unmet_kwh.sum()) if solution.ok else None
