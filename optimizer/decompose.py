"""Exact per-site decomposition (Dantzig-Wolfe) of the LP for large fleets.

Sites (meters) only interact through caps and setpoints on nodes above them (a feeder):
a few hundred rows.  Each site keeps a persistent HiGHS LP in a worker process; a small
master LP mixes the sites' proposals under the shared rows and sends back prices for
them.  Sites re-solve warm under the new prices until no site can propose a cheaper
plan: the Lagrangian bound then proves the mix optimal for the monolithic LP (the
stopping tolerance is ``rel_gap``).  The schedule is the convex mix of the proposals.

Demand charges: a window on a node with at most one block below it (a site, or a node
above a single site) stays inside that block's LP, peak column and rows included; one on
a node with no block below only costs its base load's peak (a constant).  A window on a
shared node (two or more blocks below) would need its peak column in the master, so such
a problem falls back to the monolithic LP (``stats["fallback"]`` says why): demand
charges are few and the direct build is fast, so exactness is kept the simple way.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import highspy
import numpy as np

from optimizer.lp import LpModel, build_lp, model_status, new_highs, pass_lp, solve_lp
from optimizer.problem import FlexProblem, FloatArray, IntArray
from optimizer.solution import Solution, Status
from optimizer.verdict import finish_solution, infeasible_solution

BOX_START = 0.05  # first dual box, as a share of the highest price per kW-interval
BOX_GROWTH = 4.0  # box growth when a stage ends with the shared caps still violated


@dataclass(frozen=True)
class Coupling:
    """The shared rows: ``lo <= sum_k flow_k[t] over blocks under node <= hi``."""

    node: IntArray  # (R,)
    t: IntArray  # (R,)
    lo: FloatArray  # (R,)
    hi: FloatArray  # (R,)
    setpoint: np.ndarray  # (R,) bool: an equality with penalised deviation
    covers: np.ndarray  # (R, K) bool: block k lies under the row's node


def blocks_of(p: FlexProblem) -> IntArray:
    """Meter node of every block (one block per meter that has sessions)."""
    meters = p.evse_node[p.session_evse]
    return np.unique(meters).astype(np.int64)


def coupling_of(p: FlexProblem, blocks: IntArray) -> tuple[Coupling, np.ndarray]:
    """Shared rows, and the (N,) mask of nodes whose rows are shared (>= 2 blocks below)."""
    subtree = p.subtree_matrix()
    blocks_below = subtree[:, blocks]  # (N, K)
    shared = blocks_below.sum(axis=1) >= 2
    base_sub = p.subtree_base_load_kw()
    nodes, ts, lo, hi, is_sp = [], [], [], [], []
    for n in np.flatnonzero(shared):
        for t in range(p.n_intervals):
            imp, exp = p.node_import_max_kw[n, t], p.node_export_max_kw[n, t]
            if np.isfinite(imp) or np.isfinite(exp):
                nodes.append(n)
                ts.append(t)
                lo.append(-(exp + base_sub[n, t]))
                hi.append(imp - base_sub[n, t])
                is_sp.append(False)
            if not np.isnan(p.node_setpoint_kw[n, t]):
                nodes.append(n)
                ts.append(t)
                target = p.node_setpoint_kw[n, t] - base_sub[n, t]
                lo.append(target)
                hi.append(target)
                is_sp.append(True)
    node = np.array(nodes, dtype=np.int64)
    coupling = Coupling(node=node, t=np.array(ts, dtype=np.int64), lo=np.array(lo, dtype=float),
                        hi=np.array(hi, dtype=float), setpoint=np.array(is_sp, dtype=bool),
                        covers=blocks_below[node] if node.size else np.zeros((0, blocks.size),
                                                                             dtype=bool))
    return coupling, shared


def block_problem(p: FlexProblem, meter: int, shared: np.ndarray) -> tuple[FlexProblem, IntArray]:
    """The sub-problem of one meter: its EVSEs and sessions, shared caps removed.

    It keeps the demand-charge windows of the unshared nodes on the meter's way to the
    root (the only block that can move their peak).
    """
    evses = np.flatnonzero(p.evse_node == meter)
    sessions = np.flatnonzero(np.isin(p.session_evse, evses))
    evse_pos = np.full(p.n_evses, -1, dtype=np.int64)
    evse_pos[evses] = np.arange(evses.size)
    imp, exp = p.node_import_max_kw.copy(), p.node_export_max_kw.copy()
    setpoint = p.node_setpoint_kw.copy()
    subtree = p.subtree_matrix()
    unrelated = ~subtree[:, meter]  # nodes above other meters only
    drop = shared | unrelated
    imp[drop], exp[drop], setpoint[drop] = np.inf, np.inf, np.nan
    peaks = ~drop[p.peak_node]
    names = p.session_names
    sub = replace(
        p, node_import_max_kw=imp, node_export_max_kw=exp, node_setpoint_kw=setpoint,
        evse_node=p.evse_node[evses], evse_import_max_kw=p.evse_import_max_kw[evses],
        evse_export_max_kw=p.evse_export_max_kw[evses], evse_min_kw=p.evse_min_kw[evses],
        session_evse=evse_pos[p.session_evse[sessions]],
        session_start=p.session_start[sessions], session_end=p.session_end[sessions],
        session_energy_initial_kwh=p.session_energy_initial_kwh[sessions],
        session_energy_target_kwh=p.session_energy_target_kwh[sessions],
        session_energy_floor_kwh=p.session_energy_floor_kwh[sessions],
        session_capacity_kwh=p.session_capacity_kwh[sessions],
        session_charge_max_kw=p.session_charge_max_kw[sessions],
        session_discharge_max_kw=p.session_discharge_max_kw[sessions],
        session_charge_efficiency=p.session_charge_efficiency[sessions],
        session_discharge_efficiency=p.session_discharge_efficiency[sessions],
        peak_node=p.peak_node[peaks], peak_start=p.peak_start[peaks],
        peak_end=p.peak_end[peaks], peak_price_per_kw=p.peak_price_per_kw[peaks],
        peak_floor_kw=p.peak_floor()[peaks],
        evse_names=tuple(p.evse_names[i] for i in evses) if p.evse_names else (),
        session_names=tuple(names[i] for i in sessions) if names else ())
    return sub, sessions


class _Block:
    """One site's persistent LP; proposals are (cost, flow per interval, c, d)."""

    def __init__(self, p: FlexProblem, meter: int, shared: np.ndarray) -> None:
        sub, self.sessions = block_problem(p, meter, shared)
        self.model: LpModel = build_lp(sub)
        # the tie-break weights depend on a session's place in the whole problem: use those
        tie_full = p.tie_break_weights()[self.sessions]
        tie_sub = sub.tie_break_weights()
        slots = self.model.slots
        fix = p.interval_h * (tie_full - tie_sub)[slots.session, slots.t]
        self.model.col_cost[self.model.c_col] += fix
        has_d = self.model.d_col >= 0
        self.model.col_cost[self.model.d_col[has_d]] += fix[has_d]
        self.base_cost = self.model.col_cost.copy()
        # presolve only pays for the first (cold) solve, and there it cost more than it
        # saved (measured ~35 % of the share round); later solves start from the basis
        self.h = new_highs({"threads": 1, "presolve": "off"})
        pass_lp(self.h, self.model)
        self.kept: list[tuple[FloatArray, FloatArray]] = []
        self.sub = sub

    def flow(self, values: FloatArray) -> FloatArray:
        m = self.model
        power = values[m.c_col].copy()
        has_d = m.d_col >= 0
        power[has_d] -= values[m.d_col[has_d]]
        return np.bincount(m.slots.t, weights=power,
                           minlength=self.sub.n_intervals).astype(np.float64)

    def propose(self, mu: FloatArray) -> tuple[str, float, float, FloatArray, FloatArray]:
        """Solve under prices ``mu`` (per interval, per kW of net import)."""
        m = self.model
        cost = self.base_cost.copy()
        t = m.slots.t
        cost[m.c_col] -= mu[t]
        has_d = m.d_col >= 0
        cost[m.d_col[has_d]] += mu[t[has_d]]
        self.h.changeColsCost(cost.size, np.arange(cost.size, dtype=np.int32), cost)
        self.h.run()
        status = model_status(self.h)
        values = np.asarray(self.h.getSolution().col_value)
        priced = float(self.h.getInfo().objective_function_value)
        flow = self.flow(values)
        original = priced + float(mu @ flow)
        return status, priced, original, flow, values

    def propose_within(self, lower: FloatArray, upper: FloatArray
                       ) -> tuple[str, float, float, FloatArray, FloatArray]:
        """Solve at the original prices with the net flow kept in ``[lower, upper]`` per interval.

        The bounds are the block's share of the shared caps; the rows are removed again.
        """
        m = self.model
        ts = np.flatnonzero(np.isfinite(lower) | np.isfinite(upper))
        has_d = m.d_col >= 0
        rows_of = np.full(self.sub.n_intervals, -1, dtype=np.int64)
        rows_of[ts] = np.arange(ts.size)
        keep = rows_of[m.slots.t] >= 0
        r_c = rows_of[m.slots.t[keep]]
        cols = np.concatenate([m.c_col[keep], m.d_col[keep & has_d]])
        rows = np.concatenate([r_c, rows_of[m.slots.t[keep & has_d]]])
        vals = np.concatenate([np.ones(r_c.size), -np.ones(int((keep & has_d).sum()))])
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        starts = np.searchsorted(rows, np.arange(ts.size)).astype(np.int32)
        first = m.n_rows
        self.h.addRows(ts.size, np.where(np.isfinite(lower[ts]), lower[ts], -highspy.kHighsInf),
                       np.where(np.isfinite(upper[ts]), upper[ts], highspy.kHighsInf),
                       cols.size, starts, cols.astype(np.int32), vals)
        try:
            return self.propose(np.zeros(self.sub.n_intervals))
        finally:
            self.h.deleteRows(ts.size, np.arange(first, first + ts.size, dtype=np.int32))

    def offer_within(self, lower: FloatArray, upper: FloatArray
                     ) -> tuple[str, float, float, FloatArray]:
        """Like ``offer`` but inside a share of the shared caps (a feasible first column)."""
        status, priced, original, flow, values = self.propose_within(lower, upper)
        if status == Status.OPTIMAL:
            self._keep(values)
        return status, priced, original, flow

    def _keep(self, values: FloatArray) -> None:
        m = self.model
        has_d = m.d_col >= 0
        self.kept.append((values[m.c_col].copy(), values[m.d_col[has_d]].copy()))

    def offer(self, mu: FloatArray) -> tuple[str, float, float, FloatArray]:
        """Propose under ``mu`` and keep the proposal (the master adds every optimal one)."""
        status, priced, original, flow, values = self.propose(mu)
        if status == Status.OPTIMAL:
            self._keep(values)
        return status, priced, original, flow

    def combine(self, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Charge and discharge per slot of the weighted mix of kept proposals."""
        charge = sum(w * c for w, (c, _) in zip(weights, self.kept, strict=True))
        discharge = sum(w * d for w, (_, d) in zip(weights, self.kept, strict=True))
        return np.asarray(charge, dtype=float), np.asarray(discharge, dtype=float)


def _serve(blocks: dict[int, _Block], kind: str, payload: dict[int, Any]) -> dict[int, Any]:
    """Answer one request for the blocks named in ``payload`` (in a worker or in-process).

    ``propose``: prices per block -> (status, priced, cost, flow); ``share``: flow bounds per
    block -> the same; ``combine``: proposal weights per block -> (sessions, slots, c, d).
    """
    if kind == "propose":
        return {m: blocks[m].offer(mu) for m, mu in payload.items()}
    if kind == "share":
        return {m: blocks[m].offer_within(*bounds) for m, bounds in payload.items()}
    if kind == "combine":
        return {m: (blocks[m].sessions, blocks[m].model.slots, *blocks[m].combine(w))
                for m, w in payload.items()}
    raise ValueError(f"unknown request {kind!r}")


def _worker(conn: Connection, p: FlexProblem, meters: list[int], shared: np.ndarray) -> None:
    """Own one share of the blocks and answer requests until told to stop."""
    blocks = {meter: _Block(p, meter, shared) for meter in meters}
    conn.send("ready")
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            conn.close()
            return
        conn.send(_serve(blocks, kind, payload))


class _Pool:
    """Blocks spread over worker processes (or served in-process with one worker)."""

    def __init__(self, p: FlexProblem, meters: IntArray, shared: np.ndarray,
                 workers: int) -> None:
        self.shares = [list(map(int, meters[i::workers])) for i in range(workers)]
        self.local: dict[int, _Block] | None = None
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        if workers <= 1:
            self.local = {int(m): _Block(p, int(m), shared) for m in meters}
            return
        ctx = mp.get_context("spawn")  # fork after HiGHS has started threads can hang
        for share in self.shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, p, share, shared), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            conn.recv()

    def ask(self, kind: str, payload: dict[int, Any]) -> dict[int, Any]:
        """Send each worker its blocks' part of ``payload``; merge the answers."""
        if self.local is not None:
            return _serve(self.local, kind, payload)
        for conn, share in zip(self.conns, self.shares, strict=True):
            conn.send((kind, {m: payload[m] for m in share if m in payload}))
        out: dict[int, Any] = {}
        for conn in self.conns:
            out.update(conn.recv())
        return out

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("stop", {}))
        for proc in self.procs:
            proc.join(timeout=5)


def solve_decomposed(p: FlexProblem, *, workers: int = 2, rel_gap: float = 1e-7,
                     max_iterations: int = 500, time_limit_s: float | None = None) -> Solution:
    """Solve the LP of ``p`` site by site, coordinated on the shared rows (exact)."""
    started = time.perf_counter()
    meters = blocks_of(p)
    coupling, shared = coupling_of(p, meters)
    stats: dict[str, Any] = {"path": "direct", "method": "decomposed", "blocks": int(meters.size),
                             "shared_rows": int(coupling.node.size), "workers": workers}
    shared_peaks = [int(k) for k in np.flatnonzero(shared[p.peak_node])]
    if shared_peaks:
        return _monolithic(p, shared_peaks, started, time_limit_s)
    if _empty_nodes_violated(p, meters):
        return infeasible_solution(p, Status.INFEASIBLE, stats)
    if meters.size == 0:  # nothing to schedule: only constant costs
        idle = np.zeros((p.n_sessions, p.n_intervals))
        stats.update(build_s=0.0, solve_s=time.perf_counter() - started)
        return finish_solution(p, Status.OPTIMAL, idle, idle.copy(), idle + np.nan,
                               np.zeros(p.n_sessions), _idle_meter_cost(p, meters), stats)
    block_index = {int(m): k for k, m in enumerate(meters)}
    pool = _Pool(p, meters, shared, workers)
    stats["build_s"] = time.perf_counter() - started
    try:
        return _column_generation(p, pool, meters, block_index, coupling, stats, started,
                                  rel_gap, max_iterations, time_limit_s)
    finally:
        pool.close()


def _column_generation(p: FlexProblem, pool: _Pool, meters: IntArray,
                       block_index: dict[int, int], coupling: Coupling, stats: dict[str, Any],
                       started: float, rel_gap: float, max_iterations: int,
                       time_limit_s: float | None) -> Solution:
    n_rows, n_blocks, n_t = coupling.node.size, meters.size, p.n_intervals
    master = new_highs()
    inf = highspy.kHighsInf
    no_int, no_val = np.zeros(0, np.int32), np.zeros(0)
    master.addRows(n_rows, np.where(np.isfinite(coupling.lo), coupling.lo, -inf),
                   np.where(np.isfinite(coupling.hi), coupling.hi, inf), 0, no_int, no_int,
                   no_val)
    master.addRows(n_blocks, np.ones(n_blocks), np.ones(n_blocks), 0, no_int, no_int, no_val)
    # Slack on every shared row.  A setpoint's deviation is a real, priced slack; on a cap
    # the slack's cost boxes the row's dual (|y| <= cost): it starts small so early prices
    # stay sane, and grows to an exact penalty while the master still needs it.
    exact = _exact_penalty(p)
    box = min(exact, BOX_START * p.interval_h * float(
        np.max(np.abs(p.import_price_per_kwh), initial=1.0)))
    caps = np.flatnonzero(~coupling.setpoint)
    cap_slacks = np.concatenate([caps, n_rows + caps]).astype(np.int32)
    cost = np.where(coupling.setpoint, p.interval_h * p.setpoint_penalty_per_kwh, box)
    rows = np.arange(n_rows, dtype=np.int32)
    for sign in (1.0, -1.0):
        master.addCols(n_rows, cost, np.zeros(n_rows), np.full(n_rows, inf), n_rows,
                       rows, rows, np.full(n_rows, sign))
    n_fixed_cols = 2 * n_rows
    idle_cost = _idle_meter_cost(p, meters)
    master.changeObjectiveOffset(idle_cost)
    col_block: list[int] = []

    def add_columns(replies: dict[int, tuple[str, float, float, FloatArray]]) -> None:
        for meter, (status, _priced, original, flow) in replies.items():
            if status != Status.OPTIMAL:
                continue
            k = block_index[meter]
            entry_rows = np.flatnonzero(coupling.covers[:, k])
            index = np.concatenate([entry_rows, [n_rows + k]]).astype(np.int32)
            value = np.concatenate([flow[coupling.t[entry_rows]], [1.0]])
            master.addCols(1, np.array([original]), np.zeros(1), np.full(1, inf), index.size,
                           np.zeros(1, np.int32), index, value)
            col_block.append(meter)

    lower_bound, upper_bound, master_value = -np.inf, np.inf, np.inf
    y = np.zeros(n_rows)
    sigma: FloatArray | None = None
    shares = pool.ask("share", _shares(p, coupling, meters))
    add_columns(shares)
    if all(status == Status.OPTIMAL for status, *_ in shares.values()):
        # the share proposals mix into a feasible plan: price from the master's duals at once
        master.run()
        master_value = float(master.getInfo().objective_function_value)
        if float(np.asarray(master.getSolution().col_value)[cap_slacks].sum()) <= 1e-9:
            upper_bound = master_value
        duals = np.asarray(master.getSolution().row_dual)
        y, sigma = duals[:n_rows], duals[n_rows:]
    iterations = 0
    while True:
        iterations += 1
        replies = pool.ask("propose", _block_prices(coupling, y, meters, n_t))
        if any(status != Status.OPTIMAL for status, *_ in replies.values()):
            stats["iterations"] = iterations
            return infeasible_solution(p, Status.INFEASIBLE, stats)
        priced = np.array([reply[1] for reply in replies.values()])
        lower_bound = max(lower_bound, idle_cost + float(priced.sum()) + _row_term(coupling, y))
        stage_done = sigma is not None and float(np.minimum(
            0.0, priced - sigma[[block_index[m] for m in replies]]).sum()) >= \
            -rel_gap * max(1.0, abs(master_value))
        add_columns(replies)
        values = np.asarray(master.getSolution().col_value) if sigma is not None else None
        violating = values is not None and float(values[cap_slacks].sum()) > 1e-9
        if stage_done and violating:
            if box >= exact:
                stats["iterations"] = iterations
                return infeasible_solution(p, Status.INFEASIBLE, stats)
            box = min(exact, box * BOX_GROWTH)
            master.changeColsCost(cap_slacks.size, cap_slacks, np.full(cap_slacks.size, box))
        master.run()
        if model_status(master) != Status.OPTIMAL:
            stats["iterations"] = iterations
            return infeasible_solution(p, Status.ERROR, stats)
        master_value = float(master.getInfo().objective_function_value)
        values = np.asarray(master.getSolution().col_value)
        if float(values[cap_slacks].sum()) <= 1e-9:
            upper_bound = min(upper_bound, master_value)
        duals = np.asarray(master.getSolution().row_dual)
        y, sigma = duals[:n_rows], duals[n_rows:]
        gap = (upper_bound - lower_bound) / max(1.0, abs(upper_bound))
        out_of_time = time_limit_s is not None and time.perf_counter() - started > time_limit_s
        if gap <= rel_gap or iterations >= max_iterations or out_of_time or n_rows == 0:
            break
    values = np.asarray(master.getSolution().col_value)
    stats.update(iterations=iterations, columns=len(col_block), lower_bound=lower_bound,
                 rel_gap=(upper_bound - lower_bound) / max(1.0, abs(upper_bound)))
    if float(values[cap_slacks].sum()) > 1e-6 or not np.isfinite(upper_bound):
        return infeasible_solution(p, Status.INFEASIBLE, stats)
    weights: dict[int, list[float]] = {int(m): [] for m in meters}
    for j, meter in enumerate(col_block):
        weights[meter].append(float(values[n_fixed_cols + j]))
    mixed = pool.ask("combine", {m: np.array(w) for m, w in weights.items()})
    shape = (p.n_sessions, n_t)
    charge, discharge = np.zeros(shape), np.zeros(shape)
    for sessions, slots, c, d in mixed.values():
        charge[sessions[slots.session], slots.t] = c
        has_d = slots.v2g_session[slots.session]
        discharge[sessions[slots.session[has_d]], slots.t[has_d]] = d
    energy, unmet = _battery(p, charge, discharge)
    stats["solve_s"] = time.perf_counter() - started - stats["build_s"]
    status = Status.OPTIMAL if stats["rel_gap"] <= rel_gap else Status.FEASIBLE
    return finish_solution(p, status, charge, discharge, energy, unmet, master_value, stats)


def _monolithic(p: FlexProblem, shared_peaks: list[int], started: float,
               time_limit_s: float | None) -> Solution:
    """The monolithic LP, for a demand charge on a node shared by several blocks."""
    nodes = sorted({_node_label(p, int(p.peak_node[k])) for k in shared_peaks})
    remaining = None if time_limit_s is None else max(
        time_limit_s - (time.perf_counter() - started), 1e-3)
    solution = solve_lp(p, time_limit_s=remaining)
    solution.stats["fallback"] = (f"demand charge on {', '.join(nodes)} above several sites: "
                                  "solved as one LP")
    return solution


def _node_label(p: FlexProblem, node: int) -> str:
    return p.node_names[node] if p.node_names else f"node {node}"


def _block_prices(coupling: Coupling, y: FloatArray, meters: IntArray,
                  n_t: int) -> dict[int, FloatArray]:
    """Per block, the price per kW of net import in each interval from the row duals."""
    prices = {}
    for k, meter in enumerate(meters):
        mu = np.zeros(n_t)
        np.add.at(mu, coupling.t, np.where(coupling.covers[:, k], y, 0.0))
        prices[int(meter)] = mu
    return prices


def _exact_penalty(p: FlexProblem) -> float:
    """Cost per kW of violating a shared cap: above any dual a cap row can have.

    A kW less in one interval costs at most the unmet-energy penalty of the energy it
    would have stored, plus the price and setpoint terms it touches, plus the price of every
    demand charge whose peak it raises; exceeding that keeps the penalised master exact
    (its optimum uses no violation when one exists).
    """
    worst = (p.unmet_penalty_per_kwh / float(np.min(p.session_charge_efficiency, initial=1.0))
             + float(np.max(np.abs(p.import_price_per_kwh)))
             + float(np.max(np.abs(p.export_price_per_kwh)))
             + p.degradation_cost_per_kwh + p.setpoint_penalty_per_kwh
             + p.unmet_penalty_per_kwh * float(np.max(1.0 / p.session_discharge_efficiency,
                                                      initial=1.0)))
    # a kW more room in one interval can also lower the peak of every block-local window
    return 10.0 * (p.interval_h * worst + float(p.peak_price_per_kw.sum()))


def _shares(p: FlexProblem, coupling: Coupling, meters: IntArray
            ) -> dict[int, tuple[FloatArray, FloatArray]]:
    """Split every shared cap among the blocks below it, in proportion to their EV power.

    Each block's flow bounds are the tightest of its shares, so proposals made inside
    them mix into a plan that meets every shared cap (unless base load alone breaks one).
    """
    n_t, n_blocks = p.n_intervals, meters.size
    charge = np.zeros((n_blocks, n_t))
    discharge = np.zeros((n_blocks, n_t))
    block_of_session = np.searchsorted(meters, p.evse_node[p.session_evse])
    np.add.at(charge, block_of_session, p.session_charge_kw())
    np.add.at(discharge, block_of_session, p.session_discharge_kw())
    upper = np.full((n_blocks, n_t), np.inf)
    lower = np.full((n_blocks, n_t), -np.inf)
    for r in np.flatnonzero(~coupling.setpoint):
        t, below = coupling.t[r], coupling.covers[r]
        if np.isfinite(coupling.hi[r]):
            weight = charge[below, t] / max(charge[below, t].sum(), 1e-9)
            upper[below, t] = np.minimum(upper[below, t], coupling.hi[r] * weight)
        if np.isfinite(coupling.lo[r]):
            weight = discharge[below, t] / max(discharge[below, t].sum(), 1e-9)
            lower[below, t] = np.maximum(lower[below, t], coupling.lo[r] * weight)
    return {int(m): (lower[k], upper[k]) for k, m in enumerate(meters)}


def _row_term(coupling: Coupling, y: FloatArray) -> float:
    """The rows' part of the Lagrangian bound: min over lo <= z <= hi of y.z."""
    side = np.where(y > 0, coupling.lo, coupling.hi)
    return float(np.where(y != 0, y * np.where(np.isfinite(side), side, 0.0), 0.0).sum())


def _battery(p: FlexProblem, charge: FloatArray, discharge: FloatArray
             ) -> tuple[FloatArray, FloatArray]:
    """Battery energy per interval and unmet energy at departure, from the powers."""
    dt = p.interval_h
    gain = dt * (p.session_charge_efficiency[:, None] * charge
                 - discharge / p.session_discharge_efficiency[:, None])
    energy = p.session_energy_initial_kwh[:, None] + np.cumsum(gain, axis=1)
    t = np.arange(p.n_intervals)
    present = (t[None, :] >= p.session_start[:, None]) & (t[None, :] < p.session_end[:, None])
    energy = np.where(present, energy, np.nan)
    last = np.clip(p.session_end - 1, 0, None)
    final = np.where(p.session_end > p.session_start,
                     energy[np.arange(p.n_sessions), last], p.session_energy_initial_kwh)
    unmet = np.clip(p.session_energy_target_kwh - final, 0.0, None)
    return energy, unmet


def _empty_nodes_violated(p: FlexProblem, meters: IntArray) -> bool:
    """True if a node with no sessions below it has base load beyond its caps."""
    empty = ~p.subtree_matrix()[:, meters].any(axis=1)
    base = p.subtree_base_load_kw()[empty]
    return bool(np.any(base > p.node_import_max_kw[empty] + 1e-9)
                or np.any(-base > p.node_export_max_kw[empty] + 1e-9))


def _idle_meter_cost(p: FlexProblem, meters: IntArray) -> float:
    """The constant cost of what no block controls.

    Base load at meters with EVSEs but no sessions, the deviation from setpoints on
    nodes with no session below them, and the demand charges on those nodes (their peak
    is the base load's).
    """
    idle = np.setdiff1d(p.meter_nodes(), meters)
    net = p.node_base_load_kw[idle]
    cost = float(p.interval_h * (np.clip(net, 0, None) * p.import_price_per_kwh
                                 - np.clip(-net, 0, None) * p.effective_export_price()).sum())
    empty = np.asarray(~p.subtree_matrix()[:, meters].any(axis=1), dtype=bool)
    deviation = p.node_setpoint_kw[empty] - p.subtree_base_load_kw()[empty]
    cost += float(p.interval_h * p.setpoint_penalty_per_kwh
                  * np.nansum(np.abs(deviation)))
    if p.n_peaks:
        alone = empty[p.peak_node]
        base = np.where(p.peak_mask(), p.subtree_base_load_kw()[p.peak_node], -np.inf)
        peak_kw = np.maximum(base.max(axis=1), p.peak_floor())
        cost += float(p.peak_price_per_kw[alone] @ peak_kw[alone])
    return cost
