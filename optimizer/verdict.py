"""What a solution means: node flows, binding caps, cost terms, infeasibility diagnosis.

Shared by every build (direct, pyomo, MILP, decomposition) so they report alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optimizer.problem import FlexProblem, FloatArray, IntArray
from optimizer.solution import Solution, Status, empty_solution

BIND_TOL_KW = 1e-6


def node_flow_kw(p: FlexProblem, power_kw: FloatArray) -> FloatArray:
    """(N, T) net import of every node: EV power and base load over its subtree."""
    evse_power = np.zeros((p.n_evses, p.n_intervals))
    np.add.at(evse_power, p.session_evse, power_kw)
    node_power = np.zeros((p.n_nodes, p.n_intervals))
    np.add.at(node_power, p.evse_node, evse_power)
    result: FloatArray = p.subtree_matrix().astype(np.float64) @ (node_power
                                                                   + p.node_base_load_kw)
    return result


def window_peaks_kw(p: FlexProblem, power_kw: FloatArray) -> FloatArray:
    """(P,) the highest net import of each demand-charge window's node, at least the peak
    the window had already reached (``peak_floor_kw``; 0 if it only exports).

    What the LP's peak column ``z`` equals at its optimum when the price is positive.
    """
    if p.n_peaks == 0:
        return np.zeros(0)
    flow = node_flow_kw(p, power_kw)[p.peak_node]  # (P, T)
    inside = np.where(p.peak_mask(), flow, -np.inf)
    peaks: FloatArray = np.maximum(inside.max(axis=1), p.peak_floor())
    return peaks


def cost_terms(p: FlexProblem, charge_kw: FloatArray, discharge_kw: FloatArray,
               unmet_kwh: FloatArray) -> dict[str, float]:
    """The objective split into what an operator pays and earns (meters net per interval).

    ``demand_charge_cost`` is each window's price per kW times its peak net import.
    """
    dt = p.interval_h
    evse_power = np.zeros((p.n_evses, p.n_intervals))
    np.add.at(evse_power, p.session_evse, charge_kw - discharge_kw)
    meter_net = p.node_base_load_kw.copy()
    np.add.at(meter_net, p.evse_node, evse_power)
    meters = p.meter_nodes()
    imported = np.clip(meter_net[meters], 0.0, None)
    exported = np.clip(-meter_net[meters], 0.0, None)
    return {
        "import_cost": float(dt * (imported * p.import_price_per_kwh).sum()),
        "export_revenue": float(dt * (exported * p.effective_export_price()).sum()),
        "degradation_cost": float(dt * p.degradation_cost_per_kwh * discharge_kw.sum()),
        "unmet_penalty": float(p.unmet_penalty_per_kwh * unmet_kwh.sum()),
        "demand_charge_cost": float(p.peak_price_per_kw @ window_peaks_kw(
            p, charge_kw - discharge_kw)),
        "imported_kwh": float(dt * imported.sum()),
        "exported_kwh": float(dt * exported.sum()),
        "charged_kwh": float(dt * charge_kw.sum()),
        "discharged_kwh": float(dt * discharge_kw.sum()),
    }


def _ranges(indices: np.ndarray) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    parts: list[str] = []
    start = prev = int(indices[0])
    for value in map(int, indices[1:]):
        if value != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = value
        prev = value
    parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(parts)


def _node_name(p: FlexProblem, node: int) -> str:
    return p.node_names[node] if p.node_names else f"node {node}"


def binding_caps(p: FlexProblem, power_kw: FloatArray) -> list[tuple[int, str, IntArray]]:
    """(node, "import" | "export", intervals) of every cap the plan reaches."""
    flow = node_flow_kw(p, power_kw)
    found: list[tuple[int, str, IntArray]] = []
    for node in range(p.n_nodes):
        for label, cap, value in (("import", p.node_import_max_kw[node], flow[node]),
                                  ("export", p.node_export_max_kw[node], -flow[node])):
            hit = np.flatnonzero(np.isfinite(cap) & (value >= cap - BIND_TOL_KW))
            if hit.size:
                found.append((node, label, hit.astype(np.int64)))
    return found


def binding_constraints(p: FlexProblem, power_kw: FloatArray,
                        unmet_kwh: FloatArray) -> tuple[str, ...]:
    """Human-readable list of the caps that bind and the sessions left short."""
    found = [f"{_node_name(p, node)}: {label} cap binds in intervals {_ranges(hit)}"
             for node, label, hit in binding_caps(p, power_kw)]
    for s in np.flatnonzero(unmet_kwh > 1e-6):
        name = p.session_names[s] if p.session_names else f"session {s}"
        found.append(f"{name}: {unmet_kwh[s]:.3f} kWh unmet at departure")
    return tuple(found)


def price_warnings(p: FlexProblem) -> tuple[str, ...]:
    capped = np.flatnonzero(p.export_price_per_kwh > p.import_price_per_kwh)
    if capped.size == 0:
        return ()
    return (f"export price above import price in intervals {_ranges(capped)}: "
            "valued at the import price (one meter cannot buy and sell at once)",)


def finish_solution(p: FlexProblem, status: str, charge_kw: FloatArray,
                    discharge_kw: FloatArray, energy_kwh: FloatArray, unmet_kwh: FloatArray,
                    objective: float, stats: dict[str, Any]) -> Solution:
    """Clean solver round-off, and attach binding constraints, cost terms and warnings."""
    charge_kw = np.clip(charge_kw, 0.0, p.session_charge_kw())
    discharge_kw = np.clip(discharge_kw, 0.0, p.session_discharge_kw())
    unmet_kwh = np.clip(unmet_kwh, 0.0, None)
    stats = dict(stats)
    stats["cost_terms"] = cost_terms(p, charge_kw, discharge_kw, unmet_kwh)
    stats["demand_charge_cost"] = stats["cost_terms"]["demand_charge_cost"]
    stats["demand_charge_peak_kw"] = window_peaks_kw(p, charge_kw - discharge_kw).tolist()
    stats.setdefault("total_s", stats.get("build_s", 0.0) + stats.get("solve_s", 0.0))
    return Solution(status=status, charge_kw=charge_kw, discharge_kw=discharge_kw,
                    energy_kwh=energy_kwh, unmet_kwh=unmet_kwh, objective=objective,
                    stats=stats, binding=binding_constraints(p, charge_kw - discharge_kw,
                                                             unmet_kwh),
                    warnings=price_warnings(p))


def cap_violations(p: FlexProblem) -> tuple[str, ...]:
    """Node-intervals whose caps cannot hold even at the most helpful EV power.

    Import caps are tested with every V2G session discharging at full power and every
    other EV idle; export caps with every EV charging at full power.
    """
    flow_low = node_flow_kw(p, -p.session_discharge_kw())
    flow_high = node_flow_kw(p, p.session_charge_kw())
    found: list[str] = []
    for node in range(p.n_nodes):
        over = np.flatnonzero(flow_low[node] > p.node_import_max_kw[node] + BIND_TOL_KW)
        if over.size:
            found.append(f"{_node_name(p, node)}: import cap below the base load even with "
                         f"full V2G discharge in intervals {_ranges(over)}")
        under = np.flatnonzero(-flow_high[node] > p.node_export_max_kw[node] + BIND_TOL_KW)
        if under.size:
            found.append(f"{_node_name(p, node)}: export cap below the base export even with "
                         f"every EV charging in intervals {_ranges(under)}")
    return tuple(found)


def infeasible_solution(p: FlexProblem, status: str, stats: dict[str, Any]) -> Solution:
    """An idle schedule that names the caps that cannot hold (DSO caps are never relaxed)."""
    unmet = np.maximum(0.0, p.session_energy_target_kwh - p.session_energy_initial_kwh)
    reasons = cap_violations(p) or (
        "no schedule meets every cap and battery limit (the caps are never relaxed)",)
    solution = empty_solution(p.n_sessions, p.n_intervals, status, float("nan"), unmet,
                              **stats)
    return Solution(status=solution.status, charge_kw=solution.charge_kw,
                    discharge_kw=solution.discharge_kw, energy_kwh=solution.energy_kwh,
                    unmet_kwh=unmet, objective=solution.objective, stats=solution.stats,
                    binding=reasons, warnings=price_warnings(p))


__all__ = ["Status", "binding_caps", "binding_constraints", "cap_violations", "cost_terms",
           "finish_solution", "infeasible_solution", "node_flow_kw", "window_peaks_kw"]
