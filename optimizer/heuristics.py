"""Online charging rules analysts compare the optimiser against: a baseline, not a plan.

``solve_rule`` schedules interval by interval, as a rule running live would, without
looking ahead and without discharging:

* ``uncontrolled``: every session charges at its bound (session and EVSE maximum) from
  arrival until its target is reached, whatever the node caps (what no control gives).
* ``edf`` (earliest departure first) and ``llf`` (least laxity first: hours left minus
  hours still needed at full power): sessions take, in priority order, as much as their
  bound, their remaining energy and the headroom of every capped node on the path to
  the root allow.
* ``round_robin``: max-min fair shares (progressive filling): equal power for every
  session a node cap limits, what a session cannot use going to the others.

Node headroom is the import cap minus the base load of the node's subtree; where the
base load alone exceeds a cap the headroom is 0 (the rule cannot fix it, it says so in
``warnings``).  Minimum power follows ACN-Sim's AC stations (pilot 0 or within
[minimum, maximum]): EDF and LLF give a session the largest feasible power and idle it
when that is below its EVSE's minimum (like ``discrete_max_feasible_rate``), so the
room is left to the next session; round robin first grants every session its minimum in
arrival order where it fits and idles the others (the first round of ACN-Sim's
``RoundRobin``), then fills fairly above those minimums.  A session whose remaining
energy is less than one interval at its minimum is finished (ACN-Sim's
``remove_finished_sessions``), so at most ``minimum * interval_h * efficiency`` kWh stay
unmet that the LP could deliver.  ``uncontrolled`` only idles an EVSE whose bound is
below its minimum (no pilot can be set); the interval in which an EV reaches its target
shows the average power, which may be below the minimum (the EV stops mid-interval).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Literal, get_args

import numpy as np

from optimizer.problem import FlexProblem, FloatArray, IntArray
from optimizer.solution import Solution, Status
from optimizer.verdict import (
    BIND_TOL_KW,
    _node_name,
    _ranges,
    cost_terms,
    finish_solution,
    node_flow_kw,
)

Rule = Literal["uncontrolled", "edf", "llf", "round_robin"]
RULES: tuple[Rule, ...] = get_args(Rule)
TOL_KW = 1e-9  # powers at or below this are idle; shares this far below a minimum still count


def solve_rule(problem: FlexProblem, rule: Rule) -> Solution:
    """Schedule ``problem`` with a classic charging rule (see the module docstring).

    The result is filled like the LP's: status ``feasible`` (a schedule without any
    optimality claim), grid-side kW, battery kWh, unmet kWh and the LP's objective
    evaluated on this schedule (``schedule_objective``), so the two compare directly.
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
    p = problem
    started = time.perf_counter()
    charge = _uncontrolled(p) if rule == "uncontrolled" else _controlled(p, rule)
    solve_s = time.perf_counter() - started
    discharge = np.zeros_like(charge)
    energy, unmet = energy_and_unmet(p, charge)
    objective = schedule_objective(p, charge, discharge, unmet)
    stats: dict[str, Any] = {"path": "rule", "method": rule, "build_s": 0.0,
                             "solve_s": solve_s}
    solution = finish_solution(p, Status.FEASIBLE, charge, discharge, energy, unmet,
                               objective, stats)
    return replace(solution, warnings=solution.warnings + exceeded_caps(p, charge))


def energy_and_unmet(p: FlexProblem, charge_kw: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Battery kWh at the end of each interval (nan outside the session), unmet kWh."""
    gain = p.interval_h * p.session_charge_efficiency[:, None] * charge_kw
    energy = p.session_energy_initial_kwh[:, None] + np.cumsum(gain, axis=1)
    final = energy[:, -1]  # charge is 0 outside the session: the energy at departure
    t = np.arange(p.n_intervals)
    present = (t[None, :] >= p.session_start[:, None]) & (t[None, :] < p.session_end[:, None])
    unmet = np.maximum(0.0, p.session_energy_target_kwh - final)
    return np.where(present, energy, np.nan), unmet


def schedule_objective(p: FlexProblem, charge_kw: FloatArray, discharge_kw: FloatArray,
                       unmet_kwh: FloatArray) -> float:
    """The LP's objective for any schedule: what ``solve_lp`` would report for it.

    Energy netted at each meter with its base load (import price for what it draws,
    export price capped at the import price for what it feeds), degradation, unmet
    penalty, setpoint deviation penalty, demand charges (price per kW times each window's
    peak net import) and the tie-break weights.  The rules themselves ignore every price.
    """
    terms = cost_terms(p, charge_kw, discharge_kw, unmet_kwh)
    dt = p.interval_h
    has_setpoint = ~np.isnan(p.node_setpoint_kw)
    deviation = node_flow_kw(p, charge_kw - discharge_kw) - p.node_setpoint_kw
    setpoint = dt * p.setpoint_penalty_per_kwh * float(np.abs(deviation[has_setpoint]).sum())
    tie = dt * float((p.tie_break_weights() * (charge_kw + discharge_kw)).sum())
    return (terms["import_cost"] - terms["export_revenue"] + terms["degradation_cost"]
            + terms["unmet_penalty"] + terms["demand_charge_cost"] + setpoint + tie)


def exceeded_caps(p: FlexProblem, charge_kw: FloatArray) -> tuple[str, ...]:
    """One warning per node whose import or export cap the schedule's net flow breaks."""
    flow = node_flow_kw(p, charge_kw)
    found: list[str] = []
    for node in range(p.n_nodes):
        for label, excess in (("import", flow[node] - p.node_import_max_kw[node]),
                              ("export", -flow[node] - p.node_export_max_kw[node])):
            over = np.flatnonzero(excess > BIND_TOL_KW)
            if over.size:
                found.append(f"{_node_name(p, node)}: {label} cap exceeded in intervals "
                             f"{_ranges(over)} (max {float(excess[over].max()):.3f} kW over)")
    return tuple(found)


def _charge_bound(p: FlexProblem) -> tuple[FloatArray, FloatArray]:
    """(S, T) charge bound, 0 where it is below the EVSE minimum; (S,) minimum kW."""
    minimum = p.evse_min_kw[p.session_evse].astype(np.float64)
    bound = p.session_charge_kw()
    return np.where(bound >= minimum[:, None] - TOL_KW, bound, 0.0), minimum


def _uncontrolled(p: FlexProblem) -> FloatArray:
    """Every session at its bound until its target is reached; node caps ignored."""
    bound, _ = _charge_bound(p)
    per_kw = p.interval_h * p.session_charge_efficiency[:, None]  # battery kWh per grid kW
    need = np.maximum(0.0, p.session_energy_target_kwh - p.session_energy_initial_kwh)
    delivered = np.minimum(np.cumsum(per_kw * bound, axis=1), need[:, None])
    gained = np.diff(delivered, axis=1, prepend=0.0)
    charge: FloatArray = np.clip(gained / per_kw, 0.0, bound)
    return charge


class _Tree:
    """The node tree as the rules use it: capped ancestors per session, subtrees."""

    def __init__(self, p: FlexProblem) -> None:
        subtree = p.subtree_matrix()
        capped = np.asarray(np.isfinite(p.node_import_max_kw).any(axis=1), dtype=bool)
        session_node = p.evse_node[p.session_evse]
        ancestors = [np.flatnonzero(subtree[:, n] & capped).tolist() for n in range(p.n_nodes)]
        self.paths: list[list[int]] = [ancestors[int(n)] for n in session_node]
        depth = subtree.sum(axis=0)
        self.bottom_up: list[int] = [int(n) for n in np.argsort(-depth, kind="stable")
                                     if capped[n]]
        self.under: list[IntArray] = [np.flatnonzero(subtree[n][session_node])
                                      for n in range(p.n_nodes)]
        headroom = p.node_import_max_kw - p.subtree_base_load_kw()
        self.headroom: FloatArray = np.maximum(headroom, 0.0)  # base load over a cap: none


def _controlled(p: FlexProblem, rule: Rule) -> FloatArray:
    """EDF, LLF or round robin, one interval after the other (see the module docstring)."""
    tree = _Tree(p)
    bound, minimum = _charge_bound(p)
    dt, eff = p.interval_h, p.session_charge_efficiency
    need = np.maximum(0.0, p.session_energy_target_kwh - p.session_energy_initial_kwh)
    charge = np.zeros((p.n_sessions, p.n_intervals))
    for t in range(p.n_intervals):
        want = np.minimum(bound[:, t], need / (dt * eff))
        want[(want <= TOL_KW) | (want < minimum - TOL_KW)] = 0.0  # finished for this rule
        active = np.flatnonzero(want > 0.0)
        if active.size == 0:
            continue
        room = tree.headroom[:, t]
        if rule == "round_robin":
            arrival = active[np.lexsort((active, p.session_start[active]))]
            power = _round_robin(tree, arrival, want, minimum, room)
        else:
            if rule == "edf":
                key = p.session_end[active].astype(np.float64)
            else:  # laxity in hours: time left minus time needed at full power
                needed_h = need[active] / (eff[active] * bound[active, t])
                key = (p.session_end[active] - t) * dt - needed_h
            order = active[np.lexsort((active, p.session_end[active], key))]
            power = _greedy(tree.paths, order, want, minimum, room)
        charge[:, t] = power
        need = np.maximum(0.0, need - dt * eff * power)
    return charge


def _greedy(paths: list[list[int]], order: IntArray, want: FloatArray, minimum: FloatArray,
            room: FloatArray) -> FloatArray:
    """Sessions in ``order`` take what is left on their path, up to ``want``.

    A share below the session's minimum is declined: the session idles and leaves the
    room to the sessions after it.  Plain Python floats: the loop is sequential anyway.
    """
    left = room.tolist()
    wants, mins = want.tolist(), minimum.tolist()
    power = np.zeros(want.shape[0])
    for s in order.tolist():
        share = wants[s]
        path = paths[s]
        for n in path:
            if left[n] < share:
                share = left[n]
        if share <= TOL_KW or share < mins[s] - TOL_KW:
            continue
        for n in path:
            left[n] -= share
        power[s] = share
    return power


def _round_robin(tree: _Tree, arrival: IntArray, want: FloatArray, minimum: FloatArray,
                 room: FloatArray) -> FloatArray:
    """Minimums in arrival order where they fit, then max-min fair shares above them."""
    with_minimum = arrival[minimum[arrival] > TOL_KW]
    lower = _greedy(tree.paths, with_minimum, np.where(minimum > TOL_KW, minimum, 0.0),
                    minimum, room)
    want = np.where((minimum > TOL_KW) & (lower <= 0.0), 0.0, want)  # no room for the minimum
    lower = np.minimum(lower, want)
    active = want > 0.0
    # bottom-up: a node's fill level given the levels at which its descendants froze
    level = np.full(want.shape[0], math.inf)
    for node in tree.bottom_up:
        headroom = float(room[node])
        if math.isinf(headroom):
            continue
        idx = tree.under[node][active[tree.under[node]]]
        if idx.size == 0:
            continue
        top = np.maximum(lower[idx], np.minimum(want[idx], level[idx]))
        level[idx] = np.minimum(level[idx], _water_level(lower[idx], top, headroom))
    power: FloatArray = np.where(active, np.clip(level, lower, want), 0.0)
    return power


def _water_level(lower: FloatArray, upper: FloatArray, total: float) -> float:
    """The level ``L`` at which ``sum(clip(L, lower, upper))`` reaches ``total``.

    ``inf`` when the uppers fit, ``-inf`` when the lowers already fill it.  The sum is
    piecewise linear in ``L``: walk its breakpoints in order and interpolate.
    """
    if float(upper.sum()) <= total:
        return math.inf
    base = float(lower.sum())
    if base >= total:
        return -math.inf
    values = np.concatenate([lower, upper])
    steps = np.concatenate([np.ones(lower.size), -np.ones(upper.size)])
    order = np.argsort(values, kind="stable")  # a lower before an equal upper: slope >= 0
    at, slope = values[order], np.cumsum(steps[order])
    reached = base + np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(at))])
    k = int(np.searchsorted(reached, total, side="left"))  # first breakpoint at the total
    if k >= at.size:
        return math.inf
    return float(at[k - 1] + (total - reached[k - 1]) / slope[k - 1])


__all__ = ["RULES", "Rule", "energy_and_unmet", "exceeded_caps", "schedule_objective",
           "solve_rule"]
