"""``Solution``: what the scheduler returns for a ``FlexProblem`` (arrays, no timestamps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.problem import FloatArray


class Status:
    """Outcome of a solve, as plain strings so they print and serialise as they are."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # a MILP schedule whose gap is not proven small, or a time limit
    INFEASIBLE = "infeasible"  # the caps cannot hold even with every EV idle or discharging
    ERROR = "error"


@dataclass(frozen=True)
class Solution:
    """Charge and discharge kW per session and interval, battery energy, and solve facts.

    ``charge_kw`` and ``discharge_kw`` are both >= 0 (grid side); ``power_kw`` is their
    signed difference.  ``energy_kwh`` is the battery energy at the end of each interval
    (nan outside the session).  ``objective`` includes every cost term and the constant
    cost of base load at the meters.  ``stats["cost_terms"]`` splits it (demand charges in
    ``demand_charge_cost``, also at ``stats["demand_charge_cost"]``, with each window's
    peak in ``stats["demand_charge_peak_kw"]``).
    """

    status: str
    charge_kw: FloatArray
    discharge_kw: FloatArray
    energy_kwh: FloatArray
    unmet_kwh: FloatArray
    objective: float
    stats: dict[str, Any] = field(default_factory=dict)
    binding: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def power_kw(self) -> FloatArray:
        return self.charge_kw - self.discharge_kw

    @property
    def ok(self) -> bool:
        return self.status in (Status.OPTIMAL, Status.FEASIBLE)


def empty_solution(n_sessions: int, n_intervals: int, status: str, objective: float,
                   unmet_kwh: FloatArray, **stats: Any) -> Solution:
    """An all-idle schedule: what is emitted when no plan could be computed."""
    zeros = np.zeros((n_sessions, n_intervals))
    return Solution(status=status, charge_kw=zeros, discharge_kw=zeros.copy(),
                    energy_kwh=np.full((n_sessions, n_intervals), np.nan),
                    unmet_kwh=unmet_kwh, objective=objective, stats=dict(stats))
