"""The same LP as ``optimizer.lp``, written readably in pyomo (the reference formulation).

Slow to build at scale (pyomo hands HiGHS one constraint at a time), so production uses
the direct matrix build; this one documents the model and cross-checks it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.solvers.highs import Highs as AppsiHighs

from optimizer.problem import FlexProblem
from optimizer.solution import Solution, Status
from optimizer.verdict import finish_solution, infeasible_solution


def build_pyomo(p: FlexProblem) -> pyo.ConcreteModel:
    """Build the LP: battery balance, departure targets, meter netting, node caps, setpoints,
    and one peak variable per demand-charge window above the node's net import."""
    dt = p.interval_h
    charge_bound = p.session_charge_kw()
    discharge_bound = p.session_discharge_kw()
    v2g = discharge_bound.max(axis=1, initial=0.0) > 0
    tie = p.tie_break_weights()
    price_imp = p.import_price_per_kwh
    price_exp = p.effective_export_price()
    base_sub = p.subtree_base_load_kw()
    subtree = p.subtree_matrix()

    slots = [(s, t) for s in range(p.n_sessions)
             for t in range(int(p.session_start[s]), int(p.session_end[s]))]
    v2g_slots = [(s, t) for (s, t) in slots if v2g[s]]
    meter_of = {s: int(p.evse_node[p.session_evse[s]]) for s in range(p.n_sessions)}
    slots_at: dict[tuple[int, int], list[int]] = defaultdict(list)  # (meter, t) -> sessions
    for s, t in slots:
        slots_at[(meter_of[s], t)].append(s)
    export_meters = sorted({meter_of[s] for s in range(p.n_sessions) if v2g[s]}
                           | {int(n) for n in p.meter_nodes()
                              if (p.node_base_load_kw[n] < 0).any()})

    m = pyo.ConcreteModel("gridflex")
    m.constant_infeasible = False
    m.SLOTS = pyo.Set(initialize=slots, dimen=2, ordered=True)
    m.V2G = pyo.Set(initialize=v2g_slots, dimen=2, ordered=True)
    m.SESSIONS = pyo.Set(initialize=range(p.n_sessions))
    m.EXPORTS = pyo.Set(initialize=[(n, t) for n in export_meters
                                    for t in range(p.n_intervals)], dimen=2)

    m.charge = pyo.Var(m.SLOTS, bounds=lambda _, s, t: (0.0, charge_bound[s, t]))
    m.discharge = pyo.Var(m.V2G, bounds=lambda _, s, t: (0.0, discharge_bound[s, t]))

    def energy_bounds(_: Any, s: int, t: int) -> tuple[float, float]:
        low = min(p.session_energy_floor_kwh[s], p.session_energy_initial_kwh[s])
        return (float(low), float(p.session_capacity_kwh[s]))

    m.energy = pyo.Var(m.SLOTS, bounds=energy_bounds)
    m.unmet = pyo.Var(m.SESSIONS, bounds=(0.0, None))
    m.export = pyo.Var(m.EXPORTS, bounds=(0.0, None))

    def flow(s: int, t: int) -> Any:
        return m.charge[s, t] - (m.discharge[s, t] if v2g[s] else 0.0)

    def battery(m: Any, s: int, t: int) -> Any:
        before = (p.session_energy_initial_kwh[s] if t == p.session_start[s]
                  else m.energy[s, t - 1])
        gained = dt * p.session_charge_efficiency[s] * m.charge[s, t]
        if v2g[s]:
            gained -= dt / p.session_discharge_efficiency[s] * m.discharge[s, t]
        return m.energy[s, t] == before + gained

    def departure(m: Any, s: int) -> Any:
        if p.session_end[s] == p.session_start[s]:
            return m.unmet[s] >= max(0.0, p.session_energy_target_kwh[s]
                                     - p.session_energy_initial_kwh[s])
        return m.energy[s, int(p.session_end[s]) - 1] + m.unmet[s] >= \
            p.session_energy_target_kwh[s]

    def meter_export(m: Any, n: int, t: int) -> Any:
        net = sum(flow(s, t) for s in slots_at.get((n, t), []))
        return m.export[n, t] + net >= -p.node_base_load_kw[n, t]

    def ev_flow_below(node: int, t: int) -> Any:
        return sum(flow(s, t) for n in np.flatnonzero(subtree[node])
                   for s in slots_at.get((int(n), t), []))

    caps = [(n, t) for n in range(p.n_nodes) for t in range(p.n_intervals)
            if np.isfinite(p.node_import_max_kw[n, t]) or np.isfinite(p.node_export_max_kw[n, t])]
    m.CAPS = pyo.Set(initialize=caps, dimen=2)

    def node_cap(m: Any, n: int, t: int) -> Any:
        low = -(p.node_export_max_kw[n, t] + base_sub[n, t])
        high = p.node_import_max_kw[n, t] - base_sub[n, t]
        flow = ev_flow_below(n, t)
        if isinstance(flow, (int, float)):  # no EV below the node in this interval
            if not low - 1e-9 <= flow <= high + 1e-9:
                m.constant_infeasible = True  # base load alone breaks the cap
            return pyo.Constraint.Skip
        return pyo.inequality(None if np.isinf(low) else low, flow,
                              None if np.isinf(high) else high)

    rows, cols = np.nonzero(~np.isnan(p.node_setpoint_kw))
    setpoints = [(int(n), int(t)) for n, t in zip(rows, cols, strict=True)]
    m.SETPOINTS = pyo.Set(initialize=setpoints, dimen=2)
    m.above = pyo.Var(m.SETPOINTS, bounds=(0.0, None))
    m.below = pyo.Var(m.SETPOINTS, bounds=(0.0, None))

    def setpoint(m: Any, n: int, t: int) -> Any:
        return ev_flow_below(n, t) - m.above[n, t] + m.below[n, t] == \
            p.node_setpoint_kw[n, t] - base_sub[n, t]

    peak_rows = [(k, t) for k in range(p.n_peaks)
                 for t in range(int(p.peak_start[k]), int(p.peak_end[k]))]
    m.PEAKS = pyo.Set(initialize=range(p.n_peaks))
    m.PEAK_ROWS = pyo.Set(initialize=peak_rows, dimen=2)
    floor = p.peak_floor()
    m.peak = pyo.Var(m.PEAKS, bounds=lambda m, k: (float(floor[k]), None))  # kW: the
    # window's highest net import, at least the peak it has already reached

    def peak_above_flow(m: Any, k: int, t: int) -> Any:
        node = int(p.peak_node[k])
        return ev_flow_below(node, t) + base_sub[node, t] <= m.peak[k]

    m.battery_balance = pyo.Constraint(m.SLOTS, rule=battery)
    m.departure_target = pyo.Constraint(m.SESSIONS, rule=departure)
    m.meter_export_def = pyo.Constraint(m.EXPORTS, rule=meter_export)
    m.node_cap_rows = pyo.Constraint(m.CAPS, rule=node_cap)
    m.setpoint_rows = pyo.Constraint(m.SETPOINTS, rule=setpoint)
    m.peak_rows = pyo.Constraint(m.PEAK_ROWS, rule=peak_above_flow)

    base_cost = dt * float(sum(price_imp[t] * p.node_base_load_kw[n, t]
                               for n in p.meter_nodes() for t in range(p.n_intervals)))
    m.cost = pyo.Objective(sense=pyo.minimize, expr=(
        base_cost
        + sum(dt * (price_imp[t] + tie[s, t]) * m.charge[s, t] for s, t in slots)
        + sum(dt * (-price_imp[t] + p.degradation_cost_per_kwh + tie[s, t])
              * m.discharge[s, t] for s, t in v2g_slots)
        + sum(dt * (price_imp[t] - price_exp[t]) * m.export[n, t] for n, t in m.EXPORTS)
        + sum(p.unmet_penalty_per_kwh * m.unmet[s] for s in range(p.n_sessions))
        + sum(dt * p.setpoint_penalty_per_kwh * (m.above[k] + m.below[k]) for k in setpoints)
        + sum(float(p.peak_price_per_kw[k]) * m.peak[k] for k in range(p.n_peaks))))
    return m


def solve_pyomo(p: FlexProblem, *, time_limit_s: float | None = None) -> Solution:
    """Build with pyomo and solve with HiGHS through pyomo's persistent appsi interface."""
    started = time.perf_counter()
    model = build_pyomo(p)
    build_s = time.perf_counter() - started
    if model.constant_infeasible:
        return infeasible_solution(p, Status.INFEASIBLE, {"path": "pyomo", "build_s": build_s})
    if not any(len(var) for var in model.component_objects(pyo.Var)):
        # nothing to decide: the objective is the constant cost of base load and setpoints
        idle = np.zeros((p.n_sessions, p.n_intervals))
        unmet = np.array([max(0.0, p.session_energy_target_kwh[s]
                              - p.session_energy_initial_kwh[s]) for s in range(p.n_sessions)])
        return finish_solution(p, Status.OPTIMAL, idle, idle.copy(), idle + np.nan, unmet,
                               float(pyo.value(model.cost)),
                               {"path": "pyomo", "build_s": build_s, "solve_s": 0.0})
    solver = AppsiHighs()
    solver.config.load_solution = False
    solver.config.stream_solver = False
    if time_limit_s is not None:
        solver.config.time_limit = time_limit_s
    solver.highs_options = {"random_seed": 0}
    started = time.perf_counter()
    solver.set_instance(model)  # the hand-over to HiGHS: one call per constraint
    transfer_s = time.perf_counter() - started
    started = time.perf_counter()
    results = solver.solve(model)
    solve_s = time.perf_counter() - started
    stats: dict[str, Any] = {"path": "pyomo", "build_s": build_s + transfer_s,
                             "model_build_s": build_s, "transfer_s": transfer_s,
                             "solve_s": solve_s}
    condition = str(results.termination_condition)
    if "optimal" not in condition:
        status = Status.INFEASIBLE if "infeasible" in condition.lower() else Status.ERROR
        return infeasible_solution(p, status, stats)
    results.solution_loader.load_vars()
    shape = (p.n_sessions, p.n_intervals)
    charge, discharge = np.zeros(shape), np.zeros(shape)
    energy = np.full(shape, np.nan)
    for (s, t), var in model.charge.items():
        charge[s, t] = pyo.value(var)
        energy[s, t] = pyo.value(model.energy[s, t])
    for (s, t), var in model.discharge.items():
        discharge[s, t] = pyo.value(var)
    unmet = np.array([pyo.value(model.unmet[s]) for s in range(p.n_sessions)])
    return finish_solution(p, Status.OPTIMAL, charge, discharge, energy, unmet,
                           float(results.best_feasible_objective), stats)
