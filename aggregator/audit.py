"""Independent checks of a ``Schedule`` against the scenario's limits (safety first).

Computed from the domain objects, not from the optimizer's arrays, so a bug in the
problem translation cannot hide a violated DSO limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import pandas as pd

from aggregator.model import Schedule
from aggregator.scenario import Scenario

TOLERANCE_KW = 1e-6


@dataclass(frozen=True)
class Violation:
    """A limit exceeded by a schedule in one interval, with the constraint that set it."""

    node_id: str
    interval_start: datetime
    direction: str  # "import" | "export"
    flow_kw: float
    limit_kw: float
    source: str
    source_ref: str


def node_base_load_kw(scenario: Scenario, node_id: str, index: pd.DatetimeIndex) -> pd.Series:
    """Interval-average non-EV load of ``node_id`` and every node below it."""
    step = pd.Timedelta(scenario.interval)
    values = np.zeros(len(index))
    for load in scenario.loads:
        if node_id not in scenario.tree.ancestors(load.node_id):
            continue
        for i, start in enumerate(index):
            overlap = min(pd.Timestamp(load.end), start + step) - max(pd.Timestamp(load.start),
                                                                      start)
            if overlap > pd.Timedelta(0):
                values[i] += load.load_kw * (overlap / step)
    return pd.Series(values, index=index)


def cap_violations(scenario: Scenario, schedule: Schedule) -> list[Violation]:
    """Every (node or EVSE, interval) whose net flow exceeds a constraint touching it."""
    index = schedule.intervals
    step = scenario.interval
    evse_ids = {evse.evse_id for evse in scenario.tree.evses}
    flows: dict[str, pd.Series] = {}
    found: list[Violation] = []
    for constraint in scenario.constraints:
        node = constraint.node_id
        if node not in flows:
            if node in evse_ids:
                flows[node] = schedule.power_kw[node]
            else:
                flows[node] = (schedule.node_load_kw(scenario.tree, node)
                               + node_base_load_kw(scenario, node, index))
        flow = flows[node]
        for start in index:
            if not constraint.touches(start, start + step):
                continue
            value = float(flow[start])
            if constraint.import_max_kw is not None and \
                    value > constraint.import_max_kw + TOLERANCE_KW:
                found.append(Violation(node, start.to_pydatetime(), "import", value,
                                       constraint.import_max_kw, constraint.source,
                                       constraint.source_ref))
            if constraint.export_max_kw is not None and \
                    -value > constraint.export_max_kw + TOLERANCE_KW:
                found.append(Violation(node, start.to_pydatetime(), "export", -value,
                                       constraint.export_max_kw, constraint.source,
                                       constraint.source_ref))
    return found


def firm_caps(scenario: Scenario, schedule: Schedule) -> tuple[Schedule, int]:
    """The plan trimmed so that every cap holds even when an EV does not do its part.

    A profile is a limit for a charging EV (it may take less, or stop once full) and a
    setpoint for a discharging one (which may stop too, at its floor), so a plan whose
    charging at one EVSE offsets discharging at another breaks a node's cap as soon as
    either stops.  Per capped node and interval: EV charging below it plus its base load
    stays within the import cap, EV discharging below it minus its base load within the
    export cap; charge (or discharge) below the node is scaled down where it does not.
    Scaling down only lowers every other sum, so one pass over the constraints holds them
    all.  Returns the trimmed plan and how many (node, interval, direction) were trimmed.
    """
    power = schedule.power_kw.to_numpy(dtype=float, copy=True)
    column = {evse_id: k for k, evse_id in enumerate(schedule.power_kw.columns)}
    index = schedule.intervals
    step = scenario.interval
    evse_ids = {evse.evse_id for evse in scenario.tree.evses}
    trimmed = 0
    nodes: dict[str, tuple[list[int], np.ndarray]] = {}  # node -> EVSE columns, base kW
    for constraint in scenario.constraints:
        node = constraint.node_id
        if node not in nodes:
            if node in evse_ids:
                nodes[node] = ([column[node]] if node in column else [], np.zeros(len(index)))
            else:
                nodes[node] = ([column[e.evse_id] for e in scenario.tree.evses
                                if node in scenario.tree.ancestors(e.node_id)
                                and e.evse_id in column],
                               node_base_load_kw(scenario, node, index).to_numpy())
        below, base = nodes[node]
        if not below:
            continue
        touched = np.array([constraint.touches(start, start + step) for start in index])
        part = power[:, below]
        for limit_kw, sign, room in ((constraint.import_max_kw, 1.0, -base),
                                     (constraint.export_max_kw, -1.0, base)):
            if limit_kw is None:
                continue
            flow = np.clip(sign * part, 0.0, None)  # charging (sign 1) or discharging
            total = flow.sum(axis=1)
            allowed = np.maximum(limit_kw + room, 0.0)
            over = touched & (total > allowed + TOLERANCE_KW)
            if not over.any():
                continue
            factor = np.where(over, allowed / np.where(total > 0, total, 1.0), 1.0)
            part = np.where(sign * part > 0, part * factor[:, None], part)
            trimmed += int(over.sum())
        power[:, below] = part
    if not trimmed:
        return schedule, 0
    new_power = pd.DataFrame(power, index=schedule.power_kw.index,
                             columns=schedule.power_kw.columns)
    sessions = schedule.session_power_kw.copy()
    old = schedule.power_kw
    for session in scenario.sessions:
        if session.session_id in sessions.columns and session.evse_id in column:
            before = old[session.evse_id].to_numpy()
            ratio = np.divide(new_power[session.evse_id].to_numpy(), before,
                              out=np.ones(len(before)), where=before != 0)
            sessions[session.session_id] = sessions[session.session_id] * ratio
    return replace(schedule, power_kw=new_power, session_power_kw=sessions), trimmed


def evse_limit_violations(scenario: Scenario, schedule: Schedule) -> list[str]:
    """EVSE ratings, V2G permissions and session power limits the schedule breaks."""
    found: list[str] = []
    for evse in scenario.tree.evses:
        power = schedule.power_kw[evse.evse_id]
        if float(power.max()) > evse.max_import_kw + TOLERANCE_KW:
            found.append(f"{evse.evse_id}: charges above its {evse.max_import_kw} kW rating")
        export_kw = evse.max_export_kw if evse.can_discharge else 0.0
        if float(-power.min()) > export_kw + TOLERANCE_KW:
            found.append(f"{evse.evse_id}: discharges beyond {export_kw} kW")
    by_id = {s.session_id: s for s in scenario.sessions}
    for session in schedule.session_power_kw.columns:
        if session not in by_id:
            continue
        power = schedule.session_power_kw[session]
        s = by_id[session]
        starts = pd.DatetimeIndex(power.index)
        present = (starts >= pd.Timestamp(s.arrival)) & (
            starts + pd.Timedelta(scenario.interval) <= pd.Timestamp(s.departure))
        if float(np.abs(power.to_numpy()[~present]).max(initial=0.0)) > TOLERANCE_KW:
            found.append(f"{session}: power outside the plugged-in window")
        if float(power.max()) > s.max_charge_kw + TOLERANCE_KW:
            found.append(f"{session}: charges above {s.max_charge_kw} kW")
        if float(-power.min()) > s.max_discharge_kw + TOLERANCE_KW:
            found.append(f"{session}: discharges above {s.max_discharge_kw} kW")
    return found
