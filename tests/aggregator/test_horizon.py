"""Receding horizon: re-basing a scenario at ``now`` with measured states of charge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.fleet import FLEET_START, generate_fleet
from aggregator.horizon import roll_forward
from aggregator.model import ModelError
from aggregator.planning import build_problem
from optimizer import solve


def test_roll_forward_rebases_and_drops_departed_sessions() -> None:
    scenario = generate_fleet(60, seed=2)
    now = FLEET_START + timedelta(hours=6, minutes=7)
    rolled = roll_forward(scenario, now)
    assert rolled.start == FLEET_START + timedelta(hours=6)  # the interval containing now
    assert rolled.end == scenario.end
    assert rolled.n_intervals == scenario.n_intervals - 24
    assert all(s.departure > rolled.start for s in rolled.sessions)
    departed = [s for s in scenario.sessions if s.departure <= rolled.start]
    assert len(rolled.sessions) == len(scenario.sessions) - len(departed) > 0


def test_measured_soc_sets_what_is_left_to_deliver() -> None:
    scenario = generate_fleet(60, seed=2)
    now = FLEET_START + timedelta(hours=3)
    plugged = next(s for s in scenario.sessions if s.arrival <= now < s.departure)
    wanted_kwh = plugged.energy_target_kwh
    rolled = roll_forward(scenario, now, {plugged.session_id: 0.5})
    after = next(s for s in rolled.sessions if s.session_id == plugged.session_id)
    assert after.soc_initial == 0.5
    expected = max(0.0, wanted_kwh - 0.5 * plugged.battery_capacity_kwh)
    assert after.energy_requested_kwh == pytest.approx(
        min(expected, plugged.battery_capacity_kwh * 0.5))
    assert after.energy_target_kwh == pytest.approx(max(wanted_kwh,
                                                        0.5 * plugged.battery_capacity_kwh))


def test_rolled_scenario_plans_from_now() -> None:
    scenario = generate_fleet(80, seed=3)
    rolled = roll_forward(scenario, FLEET_START + timedelta(hours=10))
    problem, index = build_problem(rolled)
    solution = solve(problem)
    assert solution.ok
    assert index.intervals[0] == rolled.start
    assert problem.n_intervals == rolled.n_intervals


def test_bad_now_and_unknown_sessions_are_refused() -> None:
    scenario = generate_fleet(20, seed=1)
    with pytest.raises(ModelError, match="now"):
        roll_forward(scenario, scenario.end + timedelta(minutes=1))
    with pytest.raises(ModelError, match="now"):
        roll_forward(scenario, datetime(2026, 11, 20, 13, 0))  # naive
    with pytest.raises(ModelError, match="soc_now"):
        roll_forward(scenario, FLEET_START, {"no-such-session": 0.4})
    assert roll_forward(scenario, FLEET_START.astimezone(UTC)).start == FLEET_START
