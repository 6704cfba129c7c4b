"""Translate a ``Scenario`` (domain objects, UTC datetimes) into a ``FlexProblem`` and back.

The time grid starts at ``scenario.start``.  A cap that touches any part of an interval
applies to the whole interval (profiles are constant per interval, so this keeps every
instant under the cap); the most restrictive cap wins.  A demand charge applies to
every interval its window touches, as prices do.  A session may use the intervals
it is present for in full; a session that leaves after the horizon gets a pro-rata share
of its energy wish by the horizon's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from aggregator.model import (
    DemandCharge,
    GridConstraint,
    ModelError,
    PriceSignal,
    Schedule,
    Session,
)
from aggregator.scenario import PlanSettings, Scenario
from optimizer.problem import FlexProblem, FloatArray
from optimizer.solution import Solution
from optimizer.verdict import binding_caps


@dataclass(frozen=True)
class PlanIndex:
    """How the arrays of a ``FlexProblem`` map back to the scenario's ids and times."""

    intervals: pd.DatetimeIndex
    interval: timedelta
    node_ids: tuple[str, ...]
    evse_ids: tuple[str, ...]
    sessions: tuple[Session, ...]
    cap_sources: dict[tuple[str, str, int], GridConstraint]  # (node, "import"|"export", t)
    peak_sources: tuple[DemandCharge, ...] = ()  # the demand charge of each peak window


def _interval_span(start: datetime, end: datetime, origin: datetime, step: timedelta,
                   n_intervals: int, *, inside: bool) -> tuple[int, int]:
    """Intervals ``[first, last)`` that a window touches (or lies fully inside)."""
    lo = (start - origin) / step
    hi = (end - origin) / step
    if inside:
        first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    else:
        first, last = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
    return max(0, min(first, n_intervals)), max(0, min(last, n_intervals))


def interval_prices(prices: Sequence[PriceSignal], settings: PlanSettings, origin: datetime,
                    step: timedelta, n_intervals: int) -> tuple[FloatArray, FloatArray]:
    """Import and export price per interval (currency/kWh): the time-weighted mean of the
    signals over each interval, the settings' defaults where no signal applies.  The
    planner prices with it and a replay costs its metered energy with it."""
    import_price = np.full(n_intervals, settings.default_import_price_per_kwh)
    export_price = np.full(n_intervals, settings.default_export_price_per_kwh)
    covered = np.zeros(n_intervals)
    sums_imp, sums_exp = np.zeros(n_intervals), np.zeros(n_intervals)
    for price in prices:
        first, last = _interval_span(price.start, price.end, origin, step, n_intervals,
                                     inside=False)
        for t in range(first, last):
            t0 = origin + t * step
            weight = (min(price.end, t0 + step) - max(price.start, t0)) / step
            covered[t] += weight
            sums_imp[t] += weight * price.import_price_per_kwh
            sums_exp[t] += weight * price.export_price_per_kwh
    priced = covered > 0
    gap = np.clip(1.0 - covered, 0.0, None)
    import_price[priced] = (sums_imp[priced] + gap[priced] * import_price[priced]) / (
        covered[priced] + gap[priced])
    export_price[priced] = (sums_exp[priced] + gap[priced] * export_price[priced]) / (
        covered[priced] + gap[priced])
    return import_price, export_price


def build_problem(scenario: Scenario) -> tuple[FlexProblem, PlanIndex]:
    """The optimizer's arrays for ``scenario`` and the index to read the answer back."""
    n_t, step, origin = scenario.n_intervals, scenario.interval, scenario.start
    dt_h = step.total_seconds() / 3600.0
    tree = scenario.tree
    node_ids = tuple(node.node_id for node in tree.nodes)
    node_pos = {node_id: i for i, node_id in enumerate(node_ids)}
    evses = tree.evses
    evse_pos = {evse.evse_id: i for i, evse in enumerate(evses)}
    n_n, n_e = len(node_ids), len(evses)

    node_parent = np.array([-1 if node.parent_id is None else node_pos[node.parent_id]
                            for node in tree.nodes], dtype=np.int64)
    node_import = np.full((n_n, n_t), np.inf)
    node_export = np.full((n_n, n_t), np.inf)
    node_setpoint = np.full((n_n, n_t), np.nan)
    setpoint_rank: dict[tuple[int, int], tuple[int, datetime]] = {}
    evse_import = np.array([[evse.max_import_kw] * n_t for evse in evses]).reshape(n_e, n_t)
    evse_export = np.array([[evse.max_export_kw if evse.can_discharge else 0.0] * n_t
                            for evse in evses]).reshape(n_e, n_t)
    cap_sources: dict[tuple[str, str, int], GridConstraint] = {}

    for constraint in scenario.constraints:
        first, last = _interval_span(constraint.start, constraint.effective_end, origin, step, n_t,
                                     inside=False)
        if first >= last:
            continue
        on_evse = constraint.node_id in evse_pos
        row = evse_pos[constraint.node_id] if on_evse else node_pos[constraint.node_id]
        imports, exports = (evse_import, evse_export) if on_evse else (node_import, node_export)
        for direction, limit, caps in (("import", constraint.import_max_kw, imports),
                                       ("export", constraint.export_max_kw, exports)):
            if limit is None:
                continue
            for t in range(first, last):
                key = (constraint.node_id, direction, t)
                if limit < caps[row, t] or (limit == caps[row, t] and key not in cap_sources):
                    caps[row, t] = limit
                    cap_sources[key] = constraint
        if constraint.setpoint_kw is not None:
            if on_evse:
                raise ModelError("setpoint_kw", f"constraint {constraint.source_ref!r}: "
                                 "setpoints apply to grid nodes, not EVSEs")
            rank = (constraint.priority, constraint.received_at)  # higher, then newer wins
            for t in range(first, last):
                if (row, t) not in setpoint_rank or rank > setpoint_rank[(row, t)]:
                    setpoint_rank[(row, t)] = rank
                    node_setpoint[row, t] = constraint.setpoint_kw

    base_load = np.zeros((n_n, n_t))
    for load in scenario.loads:
        first, last = _interval_span(load.start, load.end, origin, step, n_t, inside=False)
        for t in range(first, last):
            t0 = origin + t * step
            overlap = min(load.end, t0 + step) - max(load.start, t0)
            base_load[node_pos[load.node_id], t] += load.load_kw * (overlap / step)

    import_price, export_price = interval_prices(scenario.prices, scenario.settings, origin,
                                                 step, n_t)
    peaks = demand_charge_windows(scenario.demand_charges, origin, step, n_t)

    horizon_end = scenario.end
    sessions = tuple(s for s in scenario.sessions
                     if s.departure > origin and s.arrival < horizon_end)
    spans = [_interval_span(s.arrival, s.departure, origin, step, n_t, inside=True)
             for s in sessions]
    targets = [horizon_target_kwh(session, scenario) for session in sessions]

    problem = FlexProblem(
        interval_h=dt_h,
        node_parent=node_parent,
        node_import_max_kw=node_import,
        node_export_max_kw=node_export,
        node_base_load_kw=base_load,
        node_setpoint_kw=node_setpoint,
        evse_node=np.array([node_pos[e.node_id] for e in evses], dtype=np.int64),
        evse_import_max_kw=evse_import,
        evse_export_max_kw=evse_export,
        evse_min_kw=np.array([e.min_power_kw for e in evses]),
        session_evse=np.array([evse_pos[s.evse_id] for s in sessions], dtype=np.int64),
        session_start=np.array([a for a, _ in spans], dtype=np.int64),
        session_end=np.array([max(a, b) for a, b in spans], dtype=np.int64),
        session_energy_initial_kwh=_floats(s.energy_initial_kwh for s in sessions),
        session_energy_target_kwh=np.array(targets, dtype=np.float64),
        session_energy_floor_kwh=_floats(s.energy_floor_kwh for s in sessions),
        # the plan's battery is what the EV takes, not its size (the EV stops at its target)
        session_capacity_kwh=_floats(s.energy_ceiling_kwh for s in sessions),
        session_charge_max_kw=_floats(s.max_charge_kw for s in sessions),
        session_discharge_max_kw=_floats(s.max_discharge_kw for s in sessions),
        session_charge_efficiency=_floats(s.charge_efficiency for s in sessions),
        session_discharge_efficiency=_floats(s.discharge_efficiency for s in sessions),
        import_price_per_kwh=import_price,
        export_price_per_kwh=export_price,
        degradation_cost_per_kwh=scenario.settings.degradation_cost_per_kwh,
        unmet_penalty_per_kwh=scenario.settings.unmet_penalty_per_kwh,
        setpoint_penalty_per_kwh=scenario.settings.setpoint_penalty_per_kwh,
        peak_node=np.array([node_pos[c.node_id] for c, _, _ in peaks], dtype=np.int64),
        peak_start=np.array([first for _, first, _ in peaks], dtype=np.int64),
        peak_end=np.array([last for _, _, last in peaks], dtype=np.int64),
        peak_price_per_kw=np.array([c.price_per_kw for c, _, _ in peaks], dtype=np.float64),
        peak_floor_kw=np.array([c.peak_reached_kw for c, _, _ in peaks], dtype=np.float64),
        node_names=node_ids,
        evse_names=tuple(e.evse_id for e in evses),
        session_names=tuple(s.session_id for s in sessions),
    )
    intervals = pd.date_range(origin, periods=n_t, freq=step, tz="UTC")
    index = PlanIndex(intervals=intervals, interval=step, node_ids=node_ids,
                      evse_ids=tuple(e.evse_id for e in evses), sessions=sessions,
                      cap_sources=cap_sources, peak_sources=tuple(c for c, _, _ in peaks))
    return problem, index


def demand_charge_windows(charges: Sequence[DemandCharge], origin: datetime, step: timedelta,
                          n_intervals: int) -> list[tuple[DemandCharge, int, int]]:
    """Each demand charge with the intervals ``[first, last)`` its window touches; charges
    wholly outside the horizon are left out (they cannot be planned for)."""
    windows = []
    for charge in charges:
        first, last = _interval_span(charge.start, charge.end, origin, step, n_intervals,
                                     inside=False)
        if first < last:
            windows.append((charge, first, last))
    return windows


def horizon_target_kwh(session: Session, scenario: Scenario) -> float:
    """Battery energy the session should reach by the end of its stay within the horizon.

    A session leaving after the horizon gets the share of its wish that matches the
    share of its stay inside the horizon.
    """
    wish = session.energy_target_kwh - session.energy_initial_kwh
    if session.departure > scenario.end:
        present_from = max(session.arrival, scenario.start)
        wish *= (scenario.end - present_from) / (session.departure - present_from)
    return session.energy_initial_kwh + wish


def _floats(values: object) -> FloatArray:
    return np.fromiter(values, dtype=np.float64)  # type: ignore[call-overload, no-any-return]


def to_schedule(solution: Solution, problem: FlexProblem, index: PlanIndex) -> Schedule:
    """The domain ``Schedule`` (UTC-indexed DataFrames) of an optimizer ``Solution``."""
    session_ids = [s.session_id for s in index.sessions]
    session_power = pd.DataFrame(solution.power_kw.T, index=index.intervals,
                                 columns=session_ids)
    evse_power = np.zeros((problem.n_evses, problem.n_intervals))
    np.add.at(evse_power, problem.session_evse, solution.power_kw)
    power = pd.DataFrame(evse_power.T, index=index.intervals, columns=list(index.evse_ids))
    capacity_kwh = _floats(s.battery_capacity_kwh for s in index.sessions)
    soc = pd.DataFrame((solution.energy_kwh / capacity_kwh[:, None]).T,
                       index=index.intervals, columns=session_ids)
    return Schedule(power_kw=power, session_power_kw=session_power, soc=soc,
                    unmet_kwh=pd.Series(solution.unmet_kwh, index=session_ids, dtype=float),
                    interval=index.interval, objective=solution.objective,
                    status=solution.status, solver_stats=solution.stats,
                    binding=explain_binding(solution, problem, index),
                    warnings=solution.warnings)


def explain_binding(solution: Solution, problem: FlexProblem,
                    index: PlanIndex) -> tuple[str, ...]:
    """Which limits the plan runs into, when (UTC), and who set them (provenance).

    An infeasible plan keeps the optimizer's diagnosis of the caps that cannot hold.
    """
    if not solution.ok:
        return solution.binding
    lines: list[str] = []
    for node, direction, hits in binding_caps(problem, solution.power_kw):
        node_id = index.node_ids[node]
        caps = problem.node_import_max_kw if direction == "import" else \
            problem.node_export_max_kw
        runs: list[list[int]] = []
        for t in map(int, hits):
            source = index.cap_sources.get((node_id, direction, t))
            if runs and runs[-1][-1] == t - 1 and index.cap_sources.get(
                    (node_id, direction, runs[-1][-1])) is source:
                runs[-1].append(t)
            else:
                runs.append([t])
        for run in runs:
            start = index.intervals[run[0]]
            end = index.intervals[run[-1]] + index.interval
            constraint = index.cap_sources.get((node_id, direction, run[0]))
            origin = (f"{constraint.source} {constraint.source_ref}" if constraint is not None
                      else "unknown source")
            lines.append(f"{node_id}: {direction} cap {caps[node, run[0]]:g} kW binds "
                         f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC, set by {origin}")
    for session, unmet in zip(index.sessions, solution.unmet_kwh, strict=True):
        if unmet > 1e-6:
            lines.append(f"{session.session_id}: {unmet:.3f} kWh unmet at departure "
                         f"{session.departure:%Y-%m-%d %H:%M} UTC")
    return tuple(lines)
