"""MILP: minimum power while charging or discharging, and never both at once.

Branch-and-bound on the full model stalls beyond ~100 sessions (measured: no incumbent in
120 s at 1,000 sessions), so the default method is *fix-and-solve*: solve the LP (its
optimum is a lower bound on the MILP), fix every slot the LP already decides (idle, or at
or above the minimum power), and let HiGHS branch only on the ambiguous slots.  The gap is
proved against the LP bound.  If fixing makes the model infeasible, the full MILP runs,
started from nothing, within the time limit.  ``method="exact"`` always runs the full MILP.
The binaries are appended to the LP's own matrix, so every LP term (caps, setpoints,
demand-charge peaks) holds in the MILP unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import highspy
import numpy as np
import scipy.sparse as sp

from optimizer.lp import LpModel, build_lp, model_status, new_highs, pass_lp, read_columns
from optimizer.problem import FlexProblem, FloatArray, IntArray
from optimizer.solution import Solution, Status
from optimizer.verdict import finish_solution, infeasible_solution

TOL_KW = 1e-6


def _with_binaries(model: LpModel, col_lower: FloatArray, col_upper: FloatArray,
                   power_cols: IntArray, power_min: FloatArray,
                   pairs: list[tuple[int, int]]) -> tuple[LpModel, np.ndarray]:
    """Append one binary per column in ``power_cols`` (0, or ``power_min`` .. upper bound).

    ``pairs`` lists (i, j) positions in ``power_cols`` whose binaries exclude each other.
    """
    n_bin = power_cols.size
    n_cols, n_rows = model.n_cols, model.n_rows
    bin_cols = n_cols + np.arange(n_bin)
    upper = col_upper[power_cols]
    rows = np.arange(n_bin)
    # p - upper*y <= 0 ; p - min*y >= 0  (two rows per binary)
    link = sp.csc_matrix(
        (np.concatenate([np.ones(n_bin), -upper, np.ones(n_bin), -power_min]),
         (np.concatenate([rows, rows, n_bin + rows, n_bin + rows]),
          np.concatenate([power_cols, bin_cols, power_cols, bin_cols]))),
        shape=(2 * n_bin, n_cols + n_bin))
    pair_i = np.array([i for i, _ in pairs], dtype=np.int64)
    pair_j = np.array([j for _, j in pairs], dtype=np.int64)
    excl_rows = np.arange(pair_i.size)
    exclusive = sp.csc_matrix(
        (np.ones(2 * pair_i.size), (np.concatenate([excl_rows, excl_rows]),
                                    np.concatenate([bin_cols[pair_i], bin_cols[pair_j]]))),
        shape=(pair_i.size, n_cols + n_bin))
    base = sp.hstack([model.matrix, sp.csc_matrix((n_rows, n_bin))])
    matrix = sp.vstack([base, link, exclusive]).tocsc()
    extended = LpModel(
        problem=model.problem, slots=model.slots,
        col_cost=np.concatenate([model.col_cost, np.zeros(n_bin)]),
        col_lower=np.concatenate([col_lower, np.zeros(n_bin)]),
        col_upper=np.concatenate([col_upper, np.ones(n_bin)]),
        row_lower=np.concatenate([model.row_lower, np.full(n_bin, -np.inf), np.zeros(n_bin),
                                  np.full(pair_i.size, -np.inf)]),
        row_upper=np.concatenate([model.row_upper, np.zeros(n_bin), np.full(n_bin, np.inf),
                                  np.ones(pair_i.size)]),
        matrix=matrix, offset=model.offset, c_col=model.c_col, d_col=model.d_col,
        e_col=model.e_col, u_col=model.u_col, cap_row=model.cap_row, z_col=model.z_col)
    integrality = np.concatenate([np.zeros(n_cols, dtype=np.int64),
                                  np.ones(n_bin, dtype=np.int64)])
    return extended, integrality


def _slot_minimum(model: LpModel) -> FloatArray:
    p = model.problem
    return p.evse_min_kw[p.session_evse[model.slots.session]]


def _mip_model(model: LpModel, lp_values: FloatArray,
               free: np.ndarray) -> tuple[LpModel, np.ndarray, np.ndarray]:
    """The MILP with every slot outside ``free`` fixed the way the LP decided it.

    A fixed slot is idle (LP power ~0) or on (LP power >= the minimum); a slot the LP left
    in between, or charging and discharging at once, is always free.  Returns the model,
    its integrality vector and the binaries' power columns.
    """
    lower, upper = model.col_lower.copy(), model.col_upper.copy()
    minimum = _slot_minimum(model)
    c_col, d_col = model.c_col, model.d_col
    has_d = d_col >= 0
    d_safe = np.where(has_d, d_col, 0)
    # a slot whose bound is below the minimum power can only be idle
    upper[c_col[upper[c_col] < minimum - TOL_KW]] = 0.0
    upper[d_col[has_d & (upper[d_safe] < minimum - TOL_KW)]] = 0.0
    c_value = lp_values[c_col]
    d_value = np.where(has_d, lp_values[d_safe], 0.0)
    c_can = upper[c_col] > 0
    d_can = has_d & (upper[d_safe] > 0)
    ambiguous = ((c_value > TOL_KW) & (c_value < minimum - TOL_KW)) | (
        has_d & (d_value > TOL_KW) & (d_value < minimum - TOL_KW)) | (
        (c_value > TOL_KW) & (d_value > TOL_KW))
    free = free | ambiguous
    fixed = ~free
    c_on = fixed & c_can & (c_value >= minimum - TOL_KW)
    d_on = fixed & d_can & (d_value >= minimum - TOL_KW)
    upper[c_col[fixed & ~c_on]] = 0.0
    upper[d_col[fixed & has_d & ~d_on]] = 0.0
    lower[c_col[c_on]] = minimum[c_on]
    lower[d_col[d_on]] = minimum[d_on]
    c_bin = np.flatnonzero(free & c_can)
    d_bin = np.flatnonzero(free & d_can)
    power_cols = np.concatenate([c_col[c_bin], d_col[d_bin]])
    power_min = np.concatenate([minimum[c_bin], minimum[d_bin]])
    position_of_c = {int(k): i for i, k in enumerate(c_bin)}
    pairs = [(position_of_c[int(k)], c_bin.size + j) for j, k in enumerate(d_bin)
             if int(k) in position_of_c]
    mip, integrality = _with_binaries(model, lower, upper, power_cols, power_min, pairs)
    return mip, integrality, power_cols


def _neighbourhoods(model: LpModel, lp_values: FloatArray) -> list[tuple[str, np.ndarray]]:
    """Ever wider sets of free slots: the ambiguous ones, their sessions, sites, all."""
    slots = model.slots
    k_all = slots.size
    probe, _, power_cols = _mip_model(model, lp_values, np.zeros(k_all, dtype=bool))
    del probe
    col_slot = np.full(model.n_cols, -1, dtype=np.int64)
    col_slot[model.c_col] = np.arange(k_all)
    col_slot[model.d_col[model.d_col >= 0]] = np.flatnonzero(model.d_col >= 0)
    ambiguous = np.zeros(k_all, dtype=bool)
    ambiguous[col_slot[power_cols]] = True
    sessions = np.zeros(model.problem.n_sessions, dtype=bool)
    sessions[slots.session[ambiguous]] = True
    by_session = sessions[slots.session]
    meters = np.zeros(model.problem.n_nodes, dtype=bool)
    meters[slots.meter[ambiguous]] = True
    by_meter = meters[slots.meter]
    levels = [("slots", ambiguous), ("sessions", by_session), ("sites", by_meter),
              ("all", np.ones(k_all, dtype=bool))]
    unique: list[tuple[str, np.ndarray]] = []
    for name, mask in levels:
        if not unique or mask.sum() > unique[-1][1].sum():
            unique.append((name, mask))
    return unique


def solve_milp(p: FlexProblem, *, time_limit_s: float = 60.0, mip_rel_gap: float = 1e-4,
               gap_target: float = 0.005,
               method: Literal["fix", "exact"] = "fix") -> Solution:
    """Solve with minimum power and charge/discharge exclusivity; gap proved vs the LP.

    ``fix`` widens the free neighbourhood until the incumbent is within ``gap_target`` of
    the LP bound or the time limit is reached; ``exact`` branches on every slot at once.
    """
    started = time.perf_counter()
    model = build_lp(p)
    lp = new_highs()
    pass_lp(lp, model)
    lp.run()
    stats: dict[str, Any] = {"path": "direct", "method": method, "cols": model.n_cols,
                             "rows": model.n_rows, "build_s": model.build_s,
                             "lp_solve_s": time.perf_counter() - started - model.build_s}
    if model_status(lp) != Status.OPTIMAL:
        return infeasible_solution(p, model_status(lp), stats)
    lp_bound = float(lp.getInfo().objective_function_value)
    lp_values = np.asarray(lp.getSolution().col_value)
    levels = _neighbourhoods(model, lp_values)
    if method == "exact":
        levels = levels[-1:]
    best: tuple[float, LpModel, FloatArray] | None = None
    for name, free in levels:
        remaining = time_limit_s - (time.perf_counter() - started)
        if remaining <= 0:
            break
        mip, integrality, power_cols = _mip_model(model, lp_values, free)
        h = new_highs({"mip_rel_gap": mip_rel_gap, "time_limit": remaining})
        pass_lp(h, mip, integrality)
        if best is not None:  # the incumbent is feasible in every wider neighbourhood
            start = np.concatenate([best[2][:model.n_cols],
                                    (best[2][power_cols] > TOL_KW).astype(np.float64)])
            _set_start(h, start)
        h.run()
        stats["neighbourhood"] = name
        stats["binaries"] = int(power_cols.size)
        if h.getInfo().primal_solution_status != 2:
            continue
        objective = float(h.getInfo().objective_function_value)
        if best is None or objective < best[0] - 1e-12:
            best = (objective, mip, np.asarray(h.getSolution().col_value))
        if (best[0] - lp_bound) / max(abs(lp_bound), 1e-9) <= gap_target:
            break
    stats["solve_s"] = time.perf_counter() - started - model.build_s
    if best is None:
        stats["lp_bound"] = lp_bound
        return infeasible_solution(p, Status.ERROR, stats)
    objective, mip, values = best
    gap = (objective - lp_bound) / max(abs(lp_bound), 1e-9)
    stats.update(lp_bound=lp_bound, gap_vs_lp=gap)
    charge, discharge, energy, unmet = read_columns(mip, values)
    minimum = p.evse_min_kw[p.session_evse][:, None]
    # binaries are integral only to a tolerance: snap tiny powers to exact zero
    charge = np.where(charge < minimum * 0.5, 0.0, charge)
    discharge = np.where(discharge < minimum * 0.5, 0.0, discharge)
    status = Status.OPTIMAL if gap <= mip_rel_gap else Status.FEASIBLE
    return finish_solution(p, status, charge, discharge, energy, unmet, objective, stats)


def _set_start(h: highspy.Highs, values: FloatArray) -> None:
    solution = highspy.HighsSolution()
    solution.col_value = list(values)
    solution.value_valid = True
    h.setSolution(solution)
