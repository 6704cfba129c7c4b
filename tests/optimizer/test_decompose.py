"""Per-site decomposition: the same optimum as the monolithic LP, every cap respected."""

from __future__ import annotations

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
