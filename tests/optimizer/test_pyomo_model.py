"""The pyomo reference formulation gives the direct build's optimum, feasible or not.

The random problems carry demand-charge windows too (``problems`` draws up to two), so the
agreement property covers the peak term as well as the explicit case below.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from optimizer.lp import solve_lp
from optimizer.pyomo_model import build_pyomo, solve_pyomo
from optimizer.solution import Status
from tests.optimizer.conftest import check_invariants, make_problem, problems


def test_model_has_the_documented_parts() -> None:
    model = build_pyomo(make_problem())
    assert len(model.charge) == 8 + 6 and len(model.discharge) == 6  # slots; V2G slots
    assert len(model.battery_balance) == 14 and len(model.departure_target) == 2
    assert model.constant_infeasible is False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_sessions=4))
def test_direct_and_pyomo_agree(p: object) -> None:
    direct = solve_lp(p)  # type: ignore[arg-type]
    reference = solve_pyomo(p)  # type: ignore[arg-type]
    assert direct.ok == reference.ok
    if direct.ok:
        scale = max(1.0, abs(direct.objective))
        assert abs(direct.objective - reference.objective) <= 1e-6 * scale
        check_invariants(p, reference)  # type: ignore[arg-type]


def test_pyomo_agrees_on_the_infeasible_case() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, 3] = 2.0
    base = np.zeros((2, 8))
    base[1, 3] = 40.0
    p = make_problem(node_import_max_kw=cap, node_base_load_kw=base)
    assert solve_pyomo(p).status == solve_lp(p).status == Status.INFEASIBLE


def test_pyomo_writes_the_demand_charge_like_the_direct_build() -> None:
    """Two windows (site over intervals 2-5, feeder over 6-7) with up to 6 kW of base load
    on the site: one peak variable per window, one row per window interval, the same
    optimum and the same peaks as the sparse build (V2G shaves the base load's peak)."""
    base = np.zeros((2, 8))
    base[1, 2:5] = [3.0, 6.0, 1.0]
    p = replace(make_problem(node_base_load_kw=base, import_price_per_kwh=np.full(8, 0.2)),
                peak_node=np.array([1, 0]), peak_start=np.array([2, 6]),
                peak_end=np.array([6, 8]), peak_price_per_kw=np.array([2.0, 0.7]))
    model = build_pyomo(p)
    assert len(model.peak) == 2 and len(model.peak_rows) == 4 + 2
    direct, reference = solve_lp(p), solve_pyomo(p)
    assert direct.status == reference.status == Status.OPTIMAL
    assert reference.objective == pytest.approx(direct.objective, rel=1e-7, abs=1e-7)
    np.testing.assert_allclose(reference.stats["demand_charge_peak_kw"],
                               direct.stats["demand_charge_peak_kw"], atol=1e-5)
    assert direct.stats["demand_charge_peak_kw"][0] < 6.0 - 1e-6


def test_pyomo_bounds_each_peak_by_the_peak_already_reached() -> None:
    base = np.zeros((2, 8))
    base[1, 2:5] = [3.0, 6.0, 1.0]
    p = replace(make_problem(node_base_load_kw=base, import_price_per_kwh=np.full(8, 0.2)),
                peak_node=np.array([1, 0]), peak_start=np.array([2, 6]),
                peak_end=np.array([6, 8]), peak_price_per_kw=np.array([2.0, 0.7]),
                peak_floor_kw=np.array([9.0, 0.0]))
    direct, reference = solve_lp(p), solve_pyomo(p)
    assert reference.objective == pytest.approx(direct.objective, rel=1e-7, abs=1e-7)
    assert direct.stats["demand_charge_peak_kw"][0] == pytest.approx(9.0, abs=1e-6)
