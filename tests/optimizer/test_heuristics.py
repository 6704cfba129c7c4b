"""Charging rules (uncontrolled, EDF, LLF, round robin): hand-checked cases and properties."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.heuristics import RULES, Rule, schedule_objective, solve_rule
from optimizer.lp import solve_lp
from optimizer.problem import FlexProblem
from optimizer.solution import Solution, Status
from optimizer.verdict import node_flow_kw
from tests.optimizer.conftest import make_problem, problems

TOL = 1e-6
CONTROLLED: tuple[Rule, ...] = ("edf", "llf", "round_robin")
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def site(sessions: list[tuple[int, int, float, float]], *, n_intervals: int,
         parent: list[int] | None = None, cap_kw: list[float] | None = None,
         evse_node: list[int] | None = None, minimum_kw: float | list[float] = 0.0,
         efficiency: float = 1.0, interval_h: float = 1.0) -> FlexProblem:
    """One EVSE per session ``(start, end, need_kwh, max_kw)``, from empty, static caps."""
    t, s = n_intervals, len(sessions)
    parent = parent if parent is not None else [-1]
    n = len(parent)
    caps = np.array(cap_kw if cap_kw is not None else [np.inf] * n, dtype=float)
    start, end, need, max_kw = (np.array(column) for column in zip(*sessions, strict=True))
    return FlexProblem(
        interval_h=interval_h, node_parent=np.array(parent),
        node_import_max_kw=caps[:, None] * np.ones(t),
        node_export_max_kw=np.full((n, t), np.inf), node_base_load_kw=np.zeros((n, t)),
        node_setpoint_kw=np.full((n, t), np.nan),
        evse_node=np.array(evse_node if evse_node is not None else [0] * s),
        evse_import_max_kw=np.full((s, t), 22.0), evse_export_max_kw=np.zeros((s, t)),
        evse_min_kw=np.broadcast_to(np.asarray(minimum_kw, dtype=float), (s,)).copy(),
        session_evse=np.arange(s), session_start=start.astype(np.int64),
        session_end=end.astype(np.int64), session_energy_initial_kwh=np.zeros(s),
        session_energy_target_kwh=need.astype(float), session_energy_floor_kwh=np.zeros(s),
        session_capacity_kwh=np.full(s, 100.0), session_charge_max_kw=max_kw.astype(float),
        session_discharge_max_kw=np.zeros(s), session_charge_efficiency=np.full(s, efficiency),
        session_discharge_efficiency=np.ones(s), import_price_per_kwh=np.full(t, 0.2),
        export_price_per_kwh=np.zeros(t))


# ---------------------------------------------------------------- hand-checked cases


def test_edf_serves_the_earliest_departure_first() -> None:
    # 7 kW for both; session 1 leaves after 2 h, session 0 after 4 h
    p = site([(0, 4, 7.0, 7.0), (0, 2, 7.0, 7.0)], n_intervals=4, cap_kw=[7.0])
    solution = solve_rule(p, "edf")
    np.testing.assert_allclose(solution.charge_kw, [[0, 7, 0, 0], [7, 0, 0, 0]])
    np.testing.assert_allclose(solution.unmet_kwh, [0.0, 0.0])


def test_llf_prefers_the_least_laxity_over_the_earliest_departure() -> None:
    # session 0: leaves at 2 h, needs 1 kWh (laxity 2 - 1/7 h); session 1: leaves at 4 h,
    # needs 21 kWh at 7 kW (laxity 4 - 3 = 1 h): LLF starts session 1, EDF session 0
    p = site([(0, 2, 1.0, 7.0), (0, 4, 21.0, 7.0)], n_intervals=4, cap_kw=[7.0])
    llf, edf = solve_rule(p, "llf"), solve_rule(p, "edf")
    np.testing.assert_allclose(llf.charge_kw, [[0, 1, 0, 0], [7, 6, 7, 1]])
    np.testing.assert_allclose(edf.charge_kw, [[1, 0, 0, 0], [6, 7, 7, 1]])
    assert llf.unmet_kwh.sum() == pytest.approx(0.0) == edf.unmet_kwh.sum()


def test_round_robin_splits_equally() -> None:
    p = site([(0, 1, 50.0, 7.0)] * 3, n_intervals=1, cap_kw=[9.0])
    np.testing.assert_allclose(solve_rule(p, "round_robin").charge_kw[:, 0], [3.0, 3.0, 3.0])


def test_round_robin_redistributes_what_a_session_or_a_site_cannot_use() -> None:
    # feeder 10 kW over site A (2 kW, two EVs) and site B (no cap; a 7 kW and a 1.5 kW EV):
    # A's EVs get 1 kW each, B's 1.5 kW EV its maximum, the 7 kW EV the rest (6.5 kW)
    p = site([(0, 1, 50.0, 7.0), (0, 1, 50.0, 7.0), (0, 1, 50.0, 7.0), (0, 1, 50.0, 1.5)],
             n_intervals=1, parent=[-1, 0, 0], cap_kw=[10.0, 2.0, np.inf],
             evse_node=[1, 1, 2, 2])
    np.testing.assert_allclose(solve_rule(p, "round_robin").charge_kw[:, 0],
                               [1.0, 1.0, 6.5, 1.5])
    # EDF on the same instance: index order (same departure), each takes what is left
    np.testing.assert_allclose(solve_rule(p, "edf").charge_kw[:, 0], [2.0, 0.0, 7.0, 1.0])


def test_uncontrolled_breaks_a_cap_the_other_rules_keep() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, :] = 5.0
    p = make_problem(node_import_max_kw=cap, node_names=("feeder", "site"))
    uncontrolled = solve_rule(p, "uncontrolled")
    assert node_flow_kw(p, uncontrolled.charge_kw)[0].max() == pytest.approx(11.0)
    assert any(w.startswith("feeder: import cap exceeded in intervals 0")
               for w in uncontrolled.warnings)
    assert uncontrolled.unmet_kwh.sum() == pytest.approx(0.0, abs=1e-9)
    for rule in CONTROLLED:
        solution = solve_rule(p, rule)
        assert node_flow_kw(p, solution.charge_kw)[0].max() <= 5.0 + TOL
        assert not any("exceeded" in w for w in solution.warnings)


def test_uncontrolled_charges_flat_out_until_the_target() -> None:
    # 9 kWh at 5 kW with 90 % efficiency: 4.5 + 4.5 kWh, then idle
    p = site([(0, 3, 9.0, 5.0)], n_intervals=3, efficiency=0.9, cap_kw=[1.0])
    solution = solve_rule(p, "uncontrolled")
    np.testing.assert_allclose(solution.charge_kw, [[5.0, 5.0, 0.0]])
    np.testing.assert_allclose(solution.energy_kwh, [[4.5, 9.0, 9.0]])


def test_efficiency_sets_the_last_interval_power() -> None:
    # 10 kWh at 5 kW and 90 %: 4.5 + 4.5 kWh, then 1 kWh needs 1/0.9 kW from the grid
    p = site([(0, 4, 10.0, 5.0)], n_intervals=4, efficiency=0.9)
    for rule in RULES:
        solution = solve_rule(p, rule)
        np.testing.assert_allclose(solution.charge_kw, [[5.0, 5.0, 1 / 0.9, 0.0]])
        np.testing.assert_allclose(solution.energy_kwh, [[4.5, 9.0, 10.0, 10.0]])
        assert solution.unmet_kwh[0] == pytest.approx(0.0, abs=1e-9)


def test_minimum_power_means_idle_or_at_least_the_minimum() -> None:
    # 5 kW feeder cap, 4.14 kW minimum: one EV at a time, never two below the minimum
    cap = np.full((2, 8), np.inf)
    cap[0, :] = 5.0
    p = make_problem(node_import_max_kw=cap)
    minimum = p.evse_min_kw[p.session_evse][:, None]
    for rule in CONTROLLED:
        charge = solve_rule(p, rule).charge_kw
        assert np.all((charge == 0.0) | (charge >= minimum - TOL)), rule
        assert np.all(node_flow_kw(p, charge)[0] <= 5.0 + TOL), rule
        assert charge.sum() > 0, rule


def test_a_remainder_below_one_interval_at_the_minimum_is_left_unmet() -> None:
    # 9 kWh at 7 kW with a 4 kW minimum: 7 kWh, then 2 kWh would need 2 kW < 4 kW.
    # The controlled rules stop there (ACN-Sim); uncontrolled runs on and the EV stops
    # mid-interval (2 kW on average).
    p = site([(0, 3, 9.0, 7.0)], n_intervals=3, minimum_kw=4.0)
    for rule in CONTROLLED:
        solution = solve_rule(p, rule)
        np.testing.assert_allclose(solution.charge_kw, [[7.0, 0.0, 0.0]])
        assert solution.unmet_kwh[0] == pytest.approx(2.0)
    np.testing.assert_allclose(solve_rule(p, "uncontrolled").charge_kw, [[7.0, 2.0, 0.0]])


def test_an_evse_bound_below_its_minimum_idles_every_rule() -> None:
    p = site([(0, 2, 9.0, 3.0)], n_intervals=2, minimum_kw=4.0)
    for rule in RULES:
        assert np.all(solve_rule(p, rule).charge_kw == 0.0), rule


def test_round_robin_grants_minimums_in_arrival_order_then_fills_above_them() -> None:
    # 6 kW cap, 4 kW minimum: session 1 arrived first and keeps the minimum, session 0 idles
    p = site([(1, 3, 50.0, 7.0), (0, 3, 50.0, 7.0)], n_intervals=3, cap_kw=[6.0],
             minimum_kw=4.0)
    np.testing.assert_allclose(solve_rule(p, "round_robin").charge_kw,
                               [[0.0, 0.0, 0.0], [6.0, 6.0, 6.0]])
    # a 4 kW minimum next to an EVSE without one: 4 + 2 kW, not 3 + 3 kW
    p = site([(0, 1, 50.0, 7.0), (0, 1, 50.0, 7.0)], n_intervals=1, cap_kw=[6.0],
             minimum_kw=[4.0, 0.0])
    np.testing.assert_allclose(solve_rule(p, "round_robin").charge_kw[:, 0], [4.0, 2.0])


def test_base_load_above_a_cap_leaves_that_interval_idle() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, 3] = 2.0
    base = np.zeros((2, 8))
    base[1, 3] = 40.0
    p = make_problem(node_import_max_kw=cap, node_base_load_kw=base,
                     session_energy_target_kwh=np.array([40.0, 50.0]),
                     node_names=("feeder", "site"))
    for rule in CONTROLLED:
        solution = solve_rule(p, rule)
        assert solution.ok
        assert np.all(solution.charge_kw[:, 3] == 0.0)
        assert solution.charge_kw[:, 4].sum() > 0  # charging resumes after
        assert any(w.startswith("feeder: import cap exceeded in intervals 3")
                   for w in solution.warnings)


def test_solution_is_filled_like_the_lp() -> None:
    p = make_problem()
    for rule in RULES:
        solution = solve_rule(p, rule)
        assert solution.status == Status.FEASIBLE and solution.ok
        assert solution.stats["method"] == rule and solution.stats["solve_s"] >= 0.0
        assert "cost_terms" in solution.stats
        assert np.all(solution.discharge_kw == 0.0)
        assert np.isnan(solution.energy_kwh[1, :2]).all()  # session 1 arrives at 2
        assert solution.objective == pytest.approx(
            schedule_objective(p, solution.charge_kw, solution.discharge_kw,
                               solution.unmet_kwh))


def test_rules_ignore_demand_charges_but_their_objective_pays_them() -> None:
    """A rule's schedule does not move for a demand charge, but its objective adds price
    x peak, so it stays comparable with the LP's (which would flatten the peak)."""
    p = make_problem()
    charged = replace(p, peak_node=np.array([1]), peak_start=np.array([0]),
                      peak_end=np.array([8]), peak_price_per_kw=np.array([2.0]))
    for rule in RULES:
        plain, priced = solve_rule(p, rule), solve_rule(charged, rule)
        np.testing.assert_array_equal(priced.charge_kw, plain.charge_kw)
        peak_kw = node_flow_kw(p, plain.power_kw)[1].max()
        assert priced.stats["demand_charge_cost"] == pytest.approx(2.0 * peak_kw)
        assert priced.objective == pytest.approx(plain.objective + 2.0 * peak_kw)
        assert solve_lp(charged).objective <= priced.objective + 1e-9


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule: expected one of"):
        solve_rule(make_problem(), "fifo")  # type: ignore[arg-type]


def test_a_2000_session_fleet_keeps_its_caps_quickly() -> None:
    from aggregator.fleet import generate_fleet
    from aggregator.planning import build_problem

    p, _ = build_problem(generate_fleet(2000, seed=1))
    assert (p.n_sessions, p.n_intervals) == (2000, 96)
    for rule in RULES:
        solution = solve_rule(p, rule)
        assert solution.stats["solve_s"] < 2.0, rule
        if rule != "uncontrolled":
            check_rule_schedule(p, solution)


# ---------------------------------------------------------------- properties


def wanted_kw(p: FlexProblem, solution: Solution) -> tuple[np.ndarray, np.ndarray]:
    """(S, T) power each session could use at each interval, and its kWh still needed."""
    gain = p.interval_h * p.session_charge_efficiency[:, None] * solution.charge_kw
    before = p.session_energy_initial_kwh[:, None] + np.cumsum(gain, axis=1) - gain
    need = np.maximum(0.0, p.session_energy_target_kwh[:, None] - before)
    bound = p.session_charge_kw()
    want = np.minimum(bound, need / (p.interval_h * p.session_charge_efficiency[:, None]))
    return np.where(want > 1e-9, want, 0.0), need


def headroom_kw(p: FlexProblem) -> np.ndarray:
    return np.maximum(p.node_import_max_kw - p.subtree_base_load_kw(), 0.0)


def check_rule_schedule(p: FlexProblem, solution: Solution) -> None:
    """Safety of a controlled rule: caps, bounds, minimum power, battery bookkeeping."""
    charge = solution.charge_kw
    assert solution.ok and solution.status == Status.FEASIBLE
    assert charge.shape == (p.n_sessions, p.n_intervals)
    assert np.all(solution.discharge_kw == 0.0)
    assert np.all(charge >= 0.0) and np.all(charge <= p.session_charge_kw() + TOL)
    minimum = p.evse_min_kw[p.session_evse][:, None]
    assert np.all((charge == 0.0) | (charge >= minimum - TOL)), "power below the minimum"
    flow = node_flow_kw(p, charge)
    base = node_flow_kw(p, np.zeros_like(charge))
    keepable = base <= p.node_import_max_kw
    assert np.all(flow[keepable] <= p.node_import_max_kw[keepable] + TOL), "import cap broken"
    np.testing.assert_allclose(flow[~keepable], base[~keepable], atol=1e-9)  # idle there
    check_energy(p, solution)


def check_energy(p: FlexProblem, solution: Solution) -> None:
    gain = p.interval_h * p.session_charge_efficiency[:, None] * solution.charge_kw
    energy = p.session_energy_initial_kwh[:, None] + np.cumsum(gain, axis=1)
    ceiling = np.maximum(p.session_energy_target_kwh, p.session_energy_initial_kwh)
    for s in range(p.n_sessions):
        window = slice(int(p.session_start[s]), int(p.session_end[s]))
        inside = np.zeros(p.n_intervals, dtype=bool)
        inside[window] = True
        assert np.all(np.isnan(solution.energy_kwh[s, ~inside]))
        assert np.all(solution.charge_kw[s, ~inside] == 0.0)
        np.testing.assert_allclose(solution.energy_kwh[s, inside], energy[s, inside],
                                   atol=1e-9)
        assert np.all(energy[s] <= ceiling[s] + 1e-9), "energy above the target"
        final = energy[s, -1]
        expected = max(0.0, p.session_energy_target_kwh[s] - final)
        assert solution.unmet_kwh[s] == pytest.approx(expected, abs=1e-9)


@PROPERTY
@given(problems(), st.sampled_from(CONTROLLED))
def test_controlled_rules_keep_every_cap_and_bound(p: FlexProblem, rule: Rule) -> None:
    check_rule_schedule(p, solve_rule(p, rule))


@PROPERTY
@given(problems())
def test_uncontrolled_runs_flat_out_and_delivers_the_most(p: FlexProblem) -> None:
    uncontrolled = solve_rule(p, "uncontrolled")
    check_energy(p, uncontrolled)
    bound = p.session_charge_kw()
    bound = np.where(bound >= p.evse_min_kw[p.session_evse][:, None], bound, 0.0)
    _, need = wanted_kw(p, uncontrolled)
    charge = uncontrolled.charge_kw
    assert np.all(charge <= bound + TOL)
    # below the bound only where the target is reached in that interval (or already was)
    short = charge < bound - TOL
    gain = p.interval_h * p.session_charge_efficiency[:, None] * charge
    assert np.all(gain[short] >= need[short] - 1e-9)
    for rule in CONTROLLED:
        assert np.all(uncontrolled.unmet_kwh <= solve_rule(p, rule).unmet_kwh + 1e-9), rule


def priority_order(p: FlexProblem, rule: Rule, t: int, need: np.ndarray) -> np.ndarray:
    """Position of every session in the rule's order at interval ``t`` (ties: index)."""
    index = np.arange(p.n_sessions)
    if rule == "edf":
        key = p.session_end.astype(float)
    else:
        bound = p.session_charge_kw()[:, t]
        with np.errstate(divide="ignore", invalid="ignore"):
            key = (p.session_end - t) * p.interval_h - need[:, t] / (
                p.session_charge_efficiency * bound)
    order = np.lexsort((index, p.session_end, key))
    position = np.empty(p.n_sessions, dtype=np.int64)
    position[order] = index
    return position


@PROPERTY
@given(problems(), st.sampled_from(CONTROLLED))
def test_rules_follow_their_definition(p: FlexProblem, rule: Rule) -> None:
    """Without minimum power: a session gets less than it can use only at a full node,
    and there every session after it in priority order idles (EDF, LLF), or none gets
    more than it (round robin: max-min fair)."""
    p = replace(p, evse_min_kw=np.zeros(p.n_evses))
    solution = solve_rule(p, rule)
    charge = solution.charge_kw
    want, need = wanted_kw(p, solution)
    room = headroom_kw(p)
    subtree = p.subtree_matrix()
    session_node = p.evse_node[p.session_evse]
    for t in range(p.n_intervals):
        position = priority_order(p, rule, t, need) if rule != "round_robin" else None
        for s in np.flatnonzero(charge[:, t] < want[:, t] - TOL):
            reasons = []
            for node in np.flatnonzero(subtree[:, session_node[s]]):
                under = subtree[node][session_node]
                full = charge[under, t].sum() >= room[node, t] - TOL
                if position is None:
                    fair = np.all(charge[under, t] <= charge[s, t] + TOL)
                else:
                    later = under & (position > position[s])
                    fair = np.all(charge[later, t] <= TOL)
                reasons.append(bool(full and fair))
            assert any(reasons), f"session {s} short at {t} without a full node ({rule})"


@PROPERTY
@given(problems())
def test_the_lp_is_never_worse_than_a_rule_that_keeps_the_caps(p: FlexProblem) -> None:
    """A rule's schedule that keeps every cap is feasible for the LP (which has no
    minimum power): the LP's objective is at most the rule's, on the same terms."""
    lp = solve_lp(p)
    if not lp.ok:
        return
    assert schedule_objective(p, lp.charge_kw, lp.discharge_kw, lp.unmet_kwh) == pytest.approx(
        lp.objective, rel=1e-7, abs=1e-6)
    for rule in RULES:
        solution = solve_rule(p, rule)
        if any("exceeded" in w for w in solution.warnings):
            continue
        assert lp.objective <= solution.objective + 1e-6 * (1.0 + abs(solution.objective)), rule


@PROPERTY
@given(problems())
def test_the_lp_delivers_at_least_as_much_energy(p: FlexProblem) -> None:
    """Minimum power, setpoints and demand charges off (a setpoint penalty or a price per
    kW of peak may outweigh unmet energy): the LP never leaves more kWh unmet than a rule
    whose schedule keeps the caps."""
    t = p.n_intervals
    p = replace(p, evse_min_kw=np.zeros(p.n_evses), node_setpoint_kw=np.full((p.n_nodes, t),
                                                                              np.nan),
                peak_price_per_kw=np.zeros(p.n_peaks))
    lp = solve_lp(p)
    if not lp.ok:
        return
    for rule in RULES:
        solution = solve_rule(p, rule)
        if any("exceeded" in w for w in solution.warnings):
            continue
        assert lp.unmet_kwh.sum() <= solution.unmet_kwh.sum() + 1e-5, rule
