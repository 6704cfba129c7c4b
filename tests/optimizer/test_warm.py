"""Warm re-solves after a cap or price change: same optimum as cold, fewer iterations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aggregator.fleet import generate_fleet
from aggregator.planning import build_problem
from optimizer.lp import solve_lp
from optimizer.warm import WarmLp


def test_new_cap_resolves_warm_to_the_cold_optimum() -> None:
    problem, _ = build_problem(generate_fleet(150, seed=4))
    warm = WarmLp()
    first = warm.solve(problem)
    caps = problem.node_import_max_kw.copy()
    caps[0, 20:40] = 0.5 * caps[0, 20:40]  # a DSO event halves the feeder cap for 5 hours
    changed = replace(problem, node_import_max_kw=caps)
    again = warm.solve(changed)
    cold = solve_lp(changed)
    assert first.stats["warm_start"] is False and again.stats["warm_start"] is True
    assert (warm.cold_solves, warm.warm_solves) == (1, 1)
    assert again.objective == pytest.approx(cold.objective, rel=1e-9)
    assert again.stats["iterations"] < cold.stats["iterations"]


def test_structure_change_rebuilds() -> None:
    problem, _ = build_problem(generate_fleet(40, seed=5))
    warm = WarmLp()
    warm.solve(problem)
    shorter = replace(problem, session_end=np.maximum(problem.session_start,
                                                      problem.session_end - 1))
    solution = warm.solve(shorter)
    assert solution.stats["warm_start"] is False
    assert solution.objective == pytest.approx(solve_lp(shorter).objective, rel=1e-9)
