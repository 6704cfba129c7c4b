"""The direct LP build: hand-checked instances, safety properties, and agreement with pyomo."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from optimizer.lp import build_lp, solve_lp
from optimizer.problem import FlexProblem
from optimizer.solution import Status
from optimizer.verdict import node_flow_kw
from tests.optimizer.conftest import check_invariants, make_problem, problems


def one_session(prices: list[float], **overrides: object) -> dict[str, object]:
    """One EVSE on one site, one session over the whole horizon, lossless, 1 h steps."""
    t = len(prices)
    fields: dict[str, object] = dict(
        interval_h=1.0, node_parent=np.array([-1]), node_import_max_kw=np.full((1, t), np.inf),
        node_export_max_kw=np.full((1, t), np.inf), node_base_load_kw=np.zeros((1, t)),
        node_setpoint_kw=np.full((1, t), np.nan), evse_node=np.array([0]),
        evse_import_max_kw=np.full((1, t), 7.0), evse_export_max_kw=np.zeros((1, t)),
        evse_min_kw=np.array([0.0]), session_evse=np.array([0]), session_start=np.array([0]),
        session_end=np.array([t]), session_energy_initial_kwh=np.array([0.0]),
        session_energy_target_kwh=np.array([10.0]), session_energy_floor_kwh=np.array([0.0]),
        session_capacity_kwh=np.array([50.0]), session_charge_max_kw=np.array([7.0]),
        session_discharge_max_kw=np.array([0.0]), session_charge_efficiency=np.array([1.0]),
        session_discharge_efficiency=np.array([1.0]),
        import_price_per_kwh=np.array(prices), export_price_per_kwh=np.zeros(t))
    fields.update(overrides)
    return fields


def test_golden_cheapest_hours_first() -> None:
    # 10 kWh at <= 7 kW: 7 kWh in the 0.1 hour, 3 kWh in the 0.2 hour; cost 0.7 + 0.6 = 1.3
    from optimizer.problem import FlexProblem

    solution = solve_lp(FlexProblem(**one_session([0.3, 0.1, 0.2, 0.4])))  # type: ignore[arg-type]
    assert solution.status == Status.OPTIMAL
    np.testing.assert_allclose(solution.power_kw[0], [0.0, 7.0, 3.0, 0.0], atol=1e-7)
    assert solution.objective == pytest.approx(1.3, abs=1e-4)  # the tie-break is ~1e-5
    assert solution.unmet_kwh[0] == pytest.approx(0.0, abs=1e-9)
    assert solution.stats["cost_terms"]["import_cost"] == pytest.approx(1.3, abs=1e-9)


def test_golden_v2g_arbitrage_with_losses() -> None:
    # buy at 0.1, sell at 1.0 (import 1.0 too) with 90 % each way and 0.05 degradation:
    # a discharged kWh (grid side) needs 1/0.81 kWh bought: 0.1235 + 0.05 < 1.0, so the
    # battery fills to capacity first and empties to the floor, then meets its target.
    from optimizer.problem import FlexProblem

    fields = one_session([0.1, 1.0, 0.1], evse_export_max_kw=np.full((1, 3), 7.0),
                         session_discharge_max_kw=np.array([7.0]),
                         session_charge_efficiency=np.array([0.9]),
                         session_discharge_efficiency=np.array([0.9]),
                         session_energy_initial_kwh=np.array([10.0]),
                         session_energy_target_kwh=np.array([12.0]),
                         session_energy_floor_kwh=np.array([5.0]),
                         export_price_per_kwh=np.array([0.0, 1.0, 0.0]),
                         degradation_cost_per_kwh=0.05)
    solution = solve_lp(FlexProblem(**fields))  # type: ignore[arg-type]
    check_invariants(solution_problem := FlexProblem(**fields), solution)  # type: ignore[arg-type]
    assert solution_problem.n_sessions == 1
    # t0 charge 7 kW -> 16.3 kWh; t1 discharge 7 kW -> 16.3 - 7/0.9 = 8.52 kWh (>= floor 5)
    # t2 charge (12 - 8.52) / 0.9 = 3.864 kW to meet the target exactly
    np.testing.assert_allclose(solution.power_kw[0], [7.0, -7.0, (12 - (16.3 - 7 / 0.9)) / 0.9],
                               atol=1e-6)
    exported = solution.stats["cost_terms"]["export_revenue"]
    assert exported == pytest.approx(7.0, abs=1e-6)


def test_node_cap_binds_and_is_reported() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, :] = 5.0
    p = make_problem(node_import_max_kw=cap, node_names=("feeder", "site"))
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert any(b.startswith("feeder: import cap binds") for b in solution.binding)


def test_energy_target_relaxed_never_the_cap() -> None:
    cap = np.full((2, 8), np.inf)
    cap[1, :] = 1.0  # 8 x 0.25 h x 1 kW x 0.95 = 1.9 kWh can be stored in all
    p = make_problem(node_import_max_kw=cap,
                     session_discharge_max_kw=np.zeros(2), session_names=("a", "b"))
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert solution.status == Status.OPTIMAL
    total_wish = 5.0 + 2.0
    assert solution.unmet_kwh.sum() == pytest.approx(total_wish - 1.9, abs=1e-6)
    assert any("kWh unmet" in b for b in solution.binding)


def test_base_load_above_cap_is_infeasible_and_idle() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, 3] = 2.0
    base = np.zeros((2, 8))
    base[1, 3] = 40.0  # more than any V2G discharge can offset (11 kW)
    p = make_problem(node_import_max_kw=cap, node_base_load_kw=base,
                     node_names=("feeder", "site"))
    solution = solve_lp(p)
    assert solution.status == Status.INFEASIBLE
    check_invariants(p, solution)
    assert any("feeder: import cap below the base load" in b and "3" in b
               for b in solution.binding)


def test_v2g_discharge_rescues_a_cap_that_base_load_breaks() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, 4] = 2.0
    base = np.zeros((2, 8))
    base[1, 4] = 10.0  # the V2G session must feed 8 kW back in interval 4
    p = make_problem(node_import_max_kw=cap, node_base_load_kw=base)
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert solution.status == Status.OPTIMAL
    assert solution.discharge_kw[1, 4] >= 8.0 - 1e-6


def test_setpoint_is_tracked_when_it_can_be() -> None:
    setpoint = np.full((2, 8), np.nan)
    setpoint[0, 5] = 9.0
    p = make_problem(node_setpoint_kw=setpoint)
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert solution.power_kw[:, 5].sum() == pytest.approx(9.0, abs=1e-6)


def test_export_price_above_import_price_is_capped_and_warned() -> None:
    p = make_problem(import_price_per_kwh=np.full(8, 0.1), export_price_per_kwh=np.full(8, 0.5))
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert solution.warnings and "export price above import price" in solution.warnings[0]


def test_session_without_intervals_reports_its_whole_wish_unmet() -> None:
    p = make_problem(session_start=np.array([0, 8]), session_end=np.array([8, 8]))
    solution = solve_lp(p)
    check_invariants(p, solution)
    assert solution.unmet_kwh[1] == pytest.approx(2.0)


def test_build_shapes_match_the_slots() -> None:
    p = make_problem()
    model = build_lp(p)
    assert model.slots.size == 8 + 6
    assert model.matrix.shape == (model.n_rows, model.n_cols)
    assert (model.d_col >= 0).sum() == 6  # only the V2G session's slots can discharge
    assert (model.e_col >= 0).sum() == 6  # and only they carry a battery column


def test_charge_only_session_stops_at_its_capacity_without_battery_columns() -> None:
    """Paid to charge (negative prices), a charge-only EV fills to its 12 kWh capacity in
    the two best hours (7 kWh at -0.3, 5 kWh at -0.2): the capacity row binds at departure
    and the energy read back is the running sum of the charge."""
    fields = one_session([-0.1, -0.2, -0.1, -0.3], session_capacity_kwh=np.array([12.0]))
    p = FlexProblem(**fields)  # type: ignore[arg-type]
    model = build_lp(p)
    assert (model.e_col == -1).all()
    assert model.n_rows == 2  # the departure target and the capacity
    solution = solve_lp(p)
    check_invariants(p, solution)
    np.testing.assert_allclose(solution.power_kw[0], [0.0, 5.0, 0.0, 7.0], atol=1e-7)
    np.testing.assert_allclose(solution.energy_kwh[0], [0.0, 5.0, 5.0, 12.0], atol=1e-7)
    assert solution.objective == pytest.approx(-3.1, abs=1e-4)


def test_capacity_row_only_where_the_charge_bounds_could_break_it() -> None:
    """4 h at 7 kW from empty reach 28 kWh: a 50 kWh battery needs no capacity row."""
    model = build_lp(FlexProblem(**one_session([0.1, 0.2, 0.3, 0.4])))  # type: ignore[arg-type]
    assert model.n_rows == 1


def test_results_are_deterministic() -> None:
    p = make_problem()
    first, second = solve_lp(p), solve_lp(p)
    np.testing.assert_array_equal(first.power_kw, second.power_kw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_lp_schedule_is_safe(p: object) -> None:
    solution = solve_lp(p)  # type: ignore[arg-type]
    check_invariants(p, solution)  # type: ignore[arg-type]


def test_time_limit_is_honoured_without_crashing() -> None:
    p = make_problem()
    solution = solve_lp(replace(p), time_limit_s=1e-6)
    assert solution.status in (Status.OPTIMAL, Status.FEASIBLE, Status.ERROR)
    check_invariants(p, solution)


def whole_horizon_charge(price_per_kw: float, node: int = 0, t: int = 4) -> dict[str, object]:
    """One demand-charge window over the whole horizon on ``node``."""
    return dict(peak_node=np.array([node]), peak_start=np.array([0]), peak_end=np.array([t]),
                peak_price_per_kw=np.array([price_per_kw]))


def test_demand_charge_flattens_the_peak_and_is_paid_per_kw() -> None:
    """10 kWh at <= 7 kW, two cheap hours (0.1) then two dear ones (0.3).  Without a charge:
    7 + 3 kW in the cheap hours.  With a peak z the cheap hours hold 2z kWh: for z < 5 the
    cost is 3 - 0.4 z + price z, so at 0.2 per kW z = 5 (5 + 5 kW, energy 1.0), and at 1.0
    per kW the flattest plan z = 2.5 over all four hours wins (energy 2.0).  Same energy,
    lower peak, and the objective adds price x peak."""
    fields = one_session([0.1, 0.1, 0.3, 0.3])
    plain = solve_lp(FlexProblem(**fields))  # type: ignore[arg-type]
    np.testing.assert_allclose(plain.power_kw[0], [7.0, 3.0, 0.0, 0.0], atol=1e-6)
    for price, profile, energy_cost in ((0.2, [5.0, 5.0, 0.0, 0.0], 1.0),
                                        (1.0, [2.5, 2.5, 2.5, 2.5], 2.0)):
        p = FlexProblem(**fields, **whole_horizon_charge(price))  # type: ignore[arg-type]
        solution = solve_lp(p)
        assert solution.status == Status.OPTIMAL
        check_invariants(p, solution)
        np.testing.assert_allclose(solution.power_kw[0], profile, atol=1e-6)
        assert solution.unmet_kwh[0] == pytest.approx(0.0, abs=1e-9)  # the same 10 kWh
        peak_kw = max(profile)
        assert peak_kw < plain.power_kw.max()
        assert solution.stats["demand_charge_peak_kw"] == [pytest.approx(peak_kw, abs=1e-6)]
        assert solution.stats["demand_charge_cost"] == pytest.approx(price * peak_kw, abs=1e-6)
        assert solution.stats["cost_terms"]["import_cost"] == pytest.approx(energy_cost,
                                                                            abs=1e-6)
        assert solution.objective == pytest.approx(energy_cost + price * peak_kw, abs=1e-4)


def test_the_peak_counts_the_base_load_of_the_node() -> None:
    """4 kW of base load in hour 0 sets the peak floor: the EV stays off in hour 0 and
    charges at most 4 kW later, so the net import never exceeds the base load's 4 kW."""
    base = np.zeros((1, 4))
    base[0, 0] = 4.0
    fields = one_session([0.1] * 4, node_base_load_kw=base)
    plain = solve_lp(FlexProblem(**fields))  # type: ignore[arg-type]
    assert plain.power_kw[0, 0] == pytest.approx(7.0)  # the tie-break prefers early power
    p = FlexProblem(**fields, **whole_horizon_charge(1.0))  # type: ignore[arg-type]
    solution = solve_lp(p)
    net = node_flow_kw(p, solution.power_kw)[0]
    assert solution.power_kw[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert net.max() == pytest.approx(4.0, abs=1e-6)
    assert solution.unmet_kwh[0] == pytest.approx(0.0, abs=1e-9)
    assert solution.stats["demand_charge_cost"] == pytest.approx(4.0, abs=1e-6)
    # base load cost 0.1 x 4 kWh, EV energy 0.1 x 10 kWh, peak 1.0 x 4 kW
    assert solution.objective == pytest.approx(0.4 + 1.0 + 4.0, abs=1e-4)


def test_a_window_in_which_the_node_only_exports_costs_nothing() -> None:
    """Net export is not demand: with PV above any EV load the peak column stays at 0."""
    fields = one_session([0.1] * 4, node_base_load_kw=np.full((1, 4), -10.0))
    p = FlexProblem(**fields, **whole_horizon_charge(5.0))  # type: ignore[arg-type]
    solution = solve_lp(p)
    assert solution.stats["demand_charge_peak_kw"] == [0.0]
    assert solution.stats["demand_charge_cost"] == 0.0
    assert solution.unmet_kwh[0] == pytest.approx(0.0, abs=1e-9)


def test_a_zero_demand_charge_changes_nothing() -> None:
    """Price 0: the peak column is free, the schedule and objective are the plain LP's."""
    p = make_problem()
    charged = replace(p, **whole_horizon_charge(0.0, node=0, t=8))  # type: ignore[arg-type]
    plain, with_zero = solve_lp(p), solve_lp(charged)
    np.testing.assert_allclose(with_zero.power_kw, plain.power_kw, atol=1e-7)
    assert with_zero.objective == pytest.approx(plain.objective, rel=1e-9, abs=1e-9)
    assert with_zero.stats["demand_charge_cost"] == 0.0


def test_build_adds_one_peak_column_and_one_row_per_window_interval() -> None:
    """A 4-interval window on the site and a 1-interval one on the feeder: 2 columns,
    5 rows, each row holding the window's peak column with -1."""
    p = make_problem()
    windows = replace(p, peak_node=np.array([1, 0]), peak_start=np.array([2, 7]),
                      peak_end=np.array([6, 8]), peak_price_per_kw=np.array([1.5, 0.5]))
    plain, model = build_lp(p), build_lp(windows)
    assert model.n_cols == plain.n_cols + 2 and model.n_rows == plain.n_rows + 5
    np.testing.assert_array_equal(model.z_col, [plain.n_cols, plain.n_cols + 1])
    np.testing.assert_array_equal(model.col_cost[model.z_col], [1.5, 0.5])
    z_entries = model.matrix[:, model.z_col].toarray()
    assert (z_entries == -1.0).sum(axis=0).tolist() == [4, 1]


def test_a_peak_already_reached_is_a_floor_that_costs_nothing_more_to_use() -> None:
    """The same 10 kWh at 1.0 per kW, but the window already ran at 5 kW before this plan:
    charging up to 5 kW is free of demand charge, so the plan fills the two cheap hours at
    5 kW (energy 1.0) instead of flattening to 2.5 kW, and the bill is 1.0 x 5."""
    fields = one_session([0.1, 0.1, 0.3, 0.3])
    p = FlexProblem(**fields, **whole_horizon_charge(1.0),  # type: ignore[arg-type]
                    peak_floor_kw=np.array([5.0]))
    solution = solve_lp(p)
    assert solution.status == Status.OPTIMAL
    check_invariants(p, solution)
    np.testing.assert_allclose(solution.power_kw[0], [5.0, 5.0, 0.0, 0.0], atol=1e-6)
    assert solution.stats["demand_charge_peak_kw"] == [pytest.approx(5.0, abs=1e-6)]
    assert solution.stats["demand_charge_cost"] == pytest.approx(5.0, abs=1e-6)
    assert solution.objective == pytest.approx(1.0 + 5.0, abs=1e-4)


def test_a_negative_or_misshaped_peak_floor_is_refused() -> None:
    from optimizer.problem import ProblemError

    fields = one_session([0.1, 0.1, 0.3, 0.3])
    for floor, message in ((np.array([-1.0]), "peak_floor_kw"),
                           (np.array([1.0, 2.0]), "peak_floor_kw: expected shape")):
        with pytest.raises(ProblemError, match=message):
            FlexProblem(**fields, **whole_horizon_charge(1.0),  # type: ignore[arg-type]
                        peak_floor_kw=floor)
