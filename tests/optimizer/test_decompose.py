"""Per-site decomposition: the same optimum as the monolithic LP, every cap respected."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from optimizer.decompose import blocks_of, coupling_of, solve_decomposed
from optimizer.lp import solve_lp
from optimizer.problem import FlexProblem
from optimizer.solution import Status
from tests.optimizer.conftest import check_invariants, make_problem, problems


def feeder_problem(feeder_cap_kw: float) -> FlexProblem:
    """Two sites under a feeder; the feeder cap couples them."""
    t = 8
    cap = np.full((3, t), np.inf)
    cap[0, :] = feeder_cap_kw
    return make_problem(
        node_parent=np.array([-1, 0, 0]), node_import_max_kw=cap,
        node_export_max_kw=np.full((3, t), np.inf), node_base_load_kw=np.zeros((3, t)),
        node_setpoint_kw=np.full((3, t), np.nan), evse_node=np.array([1, 2]))


def test_coupling_rows_are_the_feeder_only() -> None:
    p = feeder_problem(6.0)
    meters = blocks_of(p)
    coupling, shared = coupling_of(p, meters)
    assert list(meters) == [1, 2]
    assert shared.tolist() == [True, False, False]
    assert coupling.node.size == 8 and coupling.covers.all()


@pytest.mark.parametrize("feeder_cap_kw", [3.0, 6.0, 50.0])
def test_matches_the_monolithic_lp(feeder_cap_kw: float) -> None:
    p = feeder_problem(feeder_cap_kw)
    monolithic = solve_lp(p)
    split = solve_decomposed(p, workers=1)
    check_invariants(p, split)
    assert split.status == Status.OPTIMAL
    assert split.objective == pytest.approx(monolithic.objective, rel=1e-6, abs=1e-6)


def test_worker_processes_give_the_same_answer() -> None:
    p = feeder_problem(6.0)
    in_process = solve_decomposed(p, workers=1)
    spawned = solve_decomposed(p, workers=2)
    assert spawned.objective == pytest.approx(in_process.objective, rel=1e-7, abs=1e-7)
    check_invariants(p, spawned)


def test_infeasible_feeder_is_reported() -> None:
    p = feeder_problem(6.0)
    base = np.zeros((3, 8))
    base[0, 2] = 50.0  # feeder's own load breaks its cap whatever the sites do
    p2 = make_problem(node_parent=p.node_parent, node_import_max_kw=p.node_import_max_kw,
                      node_export_max_kw=p.node_export_max_kw, node_base_load_kw=base,
                      node_setpoint_kw=p.node_setpoint_kw, evse_node=p.evse_node)
    assert solve_decomposed(p2, workers=1).status == Status.INFEASIBLE
    assert solve_lp(p2).status == Status.INFEASIBLE


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(sites=(2, 3)))
def test_random_multi_site_problems_match(p: FlexProblem) -> None:
    monolithic = solve_lp(p)
    split = solve_decomposed(p, workers=1)
    check_invariants(p, split)
    assert split.ok == monolithic.ok
    if split.ok:
        scale = max(1.0, abs(monolithic.objective))
        assert abs(split.objective - monolithic.objective) <= 1e-6 * scale


def test_site_demand_charges_stay_in_the_blocks_and_match_the_lp() -> None:
    """A window on each site concerns one block only: the blocks carry their own peak
    column, nothing falls back, and the optimum is the monolithic LP's."""
    p = replace(feeder_problem(9.0), peak_node=np.array([1, 2]), peak_start=np.array([0, 3]),
                peak_end=np.array([8, 6]), peak_price_per_kw=np.array([2.0, 0.5]))
    monolithic = solve_lp(p)
    split = solve_decomposed(p, workers=1)
    check_invariants(p, split)
    assert split.status == Status.OPTIMAL and "fallback" not in split.stats
    assert split.stats["method"] == "decomposed"
    assert split.objective == pytest.approx(monolithic.objective, rel=1e-6, abs=1e-6)


def test_a_demand_charge_on_a_node_without_sessions_is_a_constant() -> None:
    """A third site with base load only: its peak is its base load's, priced as a
    constant outside the blocks, and the total still equals the monolithic LP."""
    t = 8
    base = np.zeros((4, t))
    base[3] = np.linspace(1.0, 8.0, t)
    p = make_problem(
        node_parent=np.array([-1, 0, 0, 0]), node_import_max_kw=np.full((4, t), np.inf),
        node_export_max_kw=np.full((4, t), np.inf), node_base_load_kw=base,
        node_setpoint_kw=np.full((4, t), np.nan), evse_node=np.array([1, 2]),
        peak_node=np.array([3]), peak_start=np.array([2]), peak_end=np.array([5]),
        peak_price_per_kw=np.array([3.0]))
    split = solve_decomposed(p, workers=1)
    assert "fallback" not in split.stats
    assert split.stats["demand_charge_cost"] == pytest.approx(3.0 * base[3, 4])
    assert split.objective == pytest.approx(solve_lp(p).objective, rel=1e-6, abs=1e-6)


def test_a_demand_charge_on_the_feeder_falls_back_to_the_monolithic_lp() -> None:
    """The feeder's peak couples both sites: the decomposition hands the problem to the
    monolithic LP and says so, with the LP's optimum."""
    p = replace(feeder_problem(9.0), peak_node=np.array([0]), peak_start=np.array([0]),
                peak_end=np.array([8]), peak_price_per_kw=np.array([2.0]),
                node_names=("feeder", "site-1", "site-2"))
    split = solve_decomposed(p, workers=2)
    assert "demand charge on feeder above several sites" in split.stats["fallback"]
    assert split.stats["method"] == "lp"
    assert split.objective == pytest.approx(solve_lp(p).objective, rel=1e-9)
    check_invariants(p, split)
