"""Problem factories for the optimizer tests: one hand-sized default and a hypothesis strategy."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from optimizer.problem import FlexProblem


def make_problem(n_intervals: int = 8, **overrides: Any) -> FlexProblem:
    """A feeder (node 0) over one site (node 1) with a plain and a V2G EVSE, two sessions."""
    t = n_intervals
    fields: dict[str, Any] = dict(
        interval_h=0.25, node_parent=np.array([-1, 0]),
        node_import_max_kw=np.full((2, t), np.inf), node_export_max_kw=np.full((2, t), np.inf),
        node_base_load_kw=np.zeros((2, t)), node_setpoint_kw=np.full((2, t), np.nan),
        evse_node=np.array([1, 1]), evse_import_max_kw=np.full((2, t), 11.0),
        evse_export_max_kw=np.vstack([np.zeros(t), np.full(t, 11.0)]),
        evse_min_kw=np.full(2, 4.14), session_evse=np.array([0, 1]),
        session_start=np.array([0, 2]), session_end=np.array([t, t]),
        session_energy_initial_kwh=np.array([10.0, 30.0]),
        session_energy_target_kwh=np.array([15.0, 32.0]),
        session_energy_floor_kwh=np.array([5.0, 10.0]),
        session_capacity_kwh=np.array([50.0, 60.0]),
        session_charge_max_kw=np.array([11.0, 11.0]),
        session_discharge_max_kw=np.array([0.0, 11.0]),
        session_charge_efficiency=np.array([0.95, 0.95]),
        session_discharge_efficiency=np.array([0.95, 0.95]),
        import_price_per_kwh=np.linspace(0.1, 0.5, t),
        export_price_per_kwh=np.linspace(0.05, 0.4, t))
    fields.update(overrides)
    return FlexProblem(**fields)


@st.composite
def problems(draw: st.DrawFn, *, max_sessions: int = 6, sites: tuple[int, int] = (1, 3),
             min_minimum_kw: float = 0.0) -> FlexProblem:
    """Random small problems: a feeder over 1-3 sites, caps, base loads, V2G, setpoints,
    and up to two demand-charge windows on any node (price 0 included)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_t = draw(st.integers(2, 10))
    n_sites = draw(st.integers(*sites))
    n_nodes = 1 + n_sites
    parent = np.array([-1] + [0] * n_sites)
    n_evses = draw(st.integers(1, 5))
    evse_node = rng.integers(1, n_nodes, size=n_evses)
    v2g_evse = rng.random(n_evses) < 0.5
    n_sessions = draw(st.integers(0, max_sessions))
    session_evse = rng.integers(0, n_evses, size=n_sessions) if n_sessions else np.zeros(
        0, dtype=np.int64)
    # sessions on one EVSE get disjoint windows by splitting the horizon
    start = np.zeros(n_sessions, dtype=np.int64)
    end = np.zeros(n_sessions, dtype=np.int64)
    for evse in range(n_evses):
        mine = np.flatnonzero(session_evse == evse)
        cuts = np.sort(rng.integers(0, n_t + 1, size=2 * mine.size))
        for k, s in enumerate(mine):
            start[s], end[s] = cuts[2 * k], cuts[2 * k + 1]
    capacity = rng.choice([20.0, 40.0, 60.0], size=n_sessions)
    initial = capacity * rng.uniform(0.0, 0.9, size=n_sessions)
    target = np.minimum(capacity, initial + rng.uniform(0.0, 30.0, size=n_sessions))
    floor = capacity * rng.uniform(0.0, 0.5, size=n_sessions)
    cap_import = np.where(rng.random((n_nodes, n_t)) < 0.5,
                          rng.uniform(0.0, 30.0, size=(n_nodes, n_t)), np.inf)
    cap_export = np.where(rng.random((n_nodes, n_t)) < 0.3,
                          rng.uniform(0.0, 15.0, size=(n_nodes, n_t)), np.inf)
    base = np.where(rng.random((n_nodes, n_t)) < 0.3, rng.uniform(-5.0, 8.0, (n_nodes, n_t)),
                    0.0)
    setpoint = np.where(rng.random((n_nodes, n_t)) < 0.1, rng.uniform(-5.0, 20.0,
                                                                       (n_nodes, n_t)), np.nan)
    price_import = rng.uniform(-0.05, 0.6, size=n_t)
    price_export = rng.uniform(0.0, 0.5, size=n_t)
    minimum = rng.uniform(min_minimum_kw, 4.5, size=n_evses)
    n_peaks = int(rng.integers(0, 3))
    peak_start = rng.integers(0, n_t, size=n_peaks)
    peak_end = peak_start + 1 + rng.integers(0, n_t - peak_start)
    peak_price = np.where(rng.random(n_peaks) < 0.2, 0.0, rng.uniform(0.0, 2.0, size=n_peaks))
    problem = FlexProblem(
        interval_h=float(draw(st.sampled_from([0.25, 0.5, 1.0]))), node_parent=parent,
        node_import_max_kw=cap_import, node_export_max_kw=cap_export, node_base_load_kw=base,
        node_setpoint_kw=setpoint, evse_node=evse_node.astype(np.int64),
        evse_import_max_kw=rng.choice([3.7, 7.4, 11.0], size=(n_evses, 1)) * np.ones(n_t),
        evse_export_max_kw=np.where(v2g_evse[:, None], 7.0, 0.0) * np.ones(n_t),
        evse_min_kw=minimum, session_evse=session_evse.astype(np.int64), session_start=start,
        session_end=end, session_energy_initial_kwh=initial,
        session_energy_target_kwh=target, session_energy_floor_kwh=floor,
        session_capacity_kwh=capacity,
        session_charge_max_kw=rng.choice([3.0, 7.4, 11.0], size=n_sessions),
        session_discharge_max_kw=np.where(rng.random(n_sessions) < 0.6, 7.0, 0.0),
        session_charge_efficiency=rng.uniform(0.85, 1.0, size=n_sessions),
        session_discharge_efficiency=rng.uniform(0.85, 1.0, size=n_sessions),
        import_price_per_kwh=price_import, export_price_per_kwh=price_export,
        degradation_cost_per_kwh=float(rng.uniform(0.0, 0.05)),
        peak_node=rng.integers(0, n_nodes, size=n_peaks), peak_start=peak_start,
        peak_end=peak_end, peak_price_per_kw=peak_price)
    if draw(st.booleans()):  # degenerate prices: everything ties but for the tie-break
        problem = replace(problem, import_price_per_kwh=np.zeros(n_t),
                          export_price_per_kwh=np.zeros(n_t))
    return problem


TOL = 1e-5


def check_invariants(p: FlexProblem, solution: Any) -> None:
    """What every returned schedule must satisfy, feasible or not (safety first)."""
    from optimizer.verdict import node_flow_kw

    charge, discharge = solution.charge_kw, solution.discharge_kw
    assert charge.shape == discharge.shape == (p.n_sessions, p.n_intervals)
    assert np.all(charge >= -TOL) and np.all(discharge >= -TOL)
    assert np.all(charge <= p.session_charge_kw() + TOL)
    assert np.all(discharge <= p.session_discharge_kw() + TOL)
    if not solution.ok:
        assert np.allclose(charge, 0) and np.allclose(discharge, 0)
        assert solution.binding, "an infeasible result must say which limits cannot hold"
        return
    flow = node_flow_kw(p, charge - discharge)
    assert np.all(flow <= p.node_import_max_kw + TOL), "import cap exceeded"
    assert np.all(-flow <= p.node_export_max_kw + TOL), "export cap exceeded"
    dt = p.interval_h
    gain = dt * (p.session_charge_efficiency[:, None] * charge
                 - discharge / p.session_discharge_efficiency[:, None])
    energy = p.session_energy_initial_kwh[:, None] + np.cumsum(gain, axis=1)
    for s in range(p.n_sessions):
        window = slice(int(p.session_start[s]), int(p.session_end[s]))
        inside = energy[s, window]
        np.testing.assert_allclose(solution.energy_kwh[s, window], inside, atol=1e-4)
        low = min(p.session_energy_floor_kwh[s], p.session_energy_initial_kwh[s])
        assert np.all(inside >= low - 1e-4) and np.all(inside <= p.session_capacity_kwh[s] + 1e-4)
        final = inside[-1] if inside.size else p.session_energy_initial_kwh[s]
        expected_unmet = max(0.0, p.session_energy_target_kwh[s] - final)
        assert abs(solution.unmet_kwh[s] - expected_unmet) < 1e-4
