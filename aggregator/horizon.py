"""Receding horizon: the scenario as seen from ``now``, with the batteries as they are.

The controller re-plans from the current interval with measured states of charge;
sessions that have left are dropped, the ones still plugged in keep their energy wish
(what is left of it), and limits and prices keep their own windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from aggregator.model import ModelError, Session, require_utc
from aggregator.scenario import Scenario


def roll_forward(scenario: Scenario, now: datetime,
                 soc_now: Mapping[str, float] | None = None) -> Scenario:
    """``scenario`` re-based at the interval containing ``now`` (same horizon end).

    ``soc_now`` maps session ids to measured state of charge (0..1); sessions already
    plugged in without a measurement keep their last known SoC.
    """
    now = require_utc(now, "now")
    if not scenario.start <= now < scenario.end:
        raise ModelError("now", f"{now.isoformat()} is outside the horizon "
                         f"{scenario.start.isoformat()} .. {scenario.end.isoformat()}")
    elapsed = int((now - scenario.start) / scenario.interval)
    start = scenario.start + elapsed * scenario.interval
    measured = dict(soc_now or {})
    unknown = set(measured) - {s.session_id for s in scenario.sessions}
    if unknown:
        raise ModelError("soc_now", f"unknown sessions {sorted(unknown)}")
    sessions: list[Session] = []
    for session in scenario.sessions:
        if session.departure <= start:
            continue
        if session.session_id not in measured:
            sessions.append(session)
            continue
        soc = measured[session.session_id]
        target_kwh = session.energy_target_kwh
        left_kwh = max(0.0, target_kwh - soc * session.battery_capacity_kwh)
        sessions.append(replace(session, arrival=min(session.arrival, start), soc_initial=soc,
                                energy_requested_kwh=min(
                                    left_kwh, session.battery_capacity_kwh * (1.0 - soc)),
                                target_soc=None))
    return replace(scenario, start=start, n_intervals=scenario.n_intervals - elapsed,
                   sessions=tuple(sessions))
