"""The pyomo reference formulation gives the direct build's optimum, feasible or not."""

from __future__ import annotations

import numpy as np
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
