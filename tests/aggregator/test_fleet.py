"""Seeded synthetic fleets: reproducible, the requested size, and physically sensible."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from aggregator.fleet import generate_fleet
from aggregator.model import OcppVersion, Session
from aggregator.planning import build_problem


def test_same_seed_gives_the_same_fleet() -> None:
    first, second = generate_fleet(120, seed=7), generate_fleet(120, seed=7)
    assert first == second  # frozen dataclasses all the way down compare by value


def test_different_seeds_give_different_fleets() -> None:
    a, b = generate_fleet(120, seed=1), generate_fleet(120, seed=2)
    assert a.sessions != b.sessions
    assert [e.v2g_capable for e in a.tree.evses] != [e.v2g_capable for e in b.tree.evses]


@pytest.mark.parametrize("n_sessions", [1, 2, 3, 17, 160, 1001])
def test_produces_exactly_n_sessions(n_sessions: int) -> None:
    scenario = generate_fleet(n_sessions, seed=3)
    assert len(scenario.sessions) == n_sessions
    assert len({s.session_id for s in scenario.sessions}) == n_sessions
    # 1.6 sessions per EVSE on average
    assert len(scenario.tree.evses) == max(1, math.ceil(n_sessions / 1.6))


def test_rejects_an_empty_fleet() -> None:
    with pytest.raises(ValueError, match="n_sessions"):
        generate_fleet(0)


@pytest.mark.parametrize(("n_sessions", "evses_per_site"), [(1000, 50), (400, 50), (90, 10)])
def test_sites_hold_at_most_evses_per_site(n_sessions: int, evses_per_site: int) -> None:
    scenario = generate_fleet(n_sessions, seed=5, evses_per_site=evses_per_site)
    per_site = Counter(e.node_id for e in scenario.tree.evses)
    sites = [n.node_id for n in scenario.tree.nodes if n.parent_id == "feeder"]
    assert set(per_site) == set(sites)  # every site has EVSEs
    assert max(per_site.values()) <= evses_per_site
    assert len(sites) == math.ceil(len(scenario.tree.evses) / evses_per_site)


def test_no_overlapping_sessions_on_an_evse() -> None:
    scenario = generate_fleet(800, seed=11)
    by_evse: dict[str, list[Session]] = defaultdict(list)
    for s in scenario.sessions:
        by_evse[s.evse_id].append(s)
    for items in by_evse.values():
        items.sort(key=lambda s: s.arrival)
        for before, after in pairwise(items):
            assert after.arrival >= before.departure


def test_every_session_fits_its_battery_and_the_horizon() -> None:
    scenario = generate_fleet(800, seed=13)
    for s in scenario.sessions:
        assert s.energy_requested_kwh is not None
        room_kwh = s.battery_capacity_kwh * (1.0 - s.soc_initial)
        assert 0.0 <= s.energy_requested_kwh <= room_kwh + 1e-9
        assert s.energy_initial_kwh + s.energy_requested_kwh <= s.battery_capacity_kwh + 1e-9
        assert scenario.start <= s.arrival < s.departure <= scenario.end
        if s.max_discharge_kw > 0:  # only a V2G EVSE is offered discharge
            assert scenario.tree.evse(s.evse_id).can_discharge


def test_about_forty_percent_of_evses_are_v2g() -> None:
    scenario = generate_fleet(1000, seed=17)  # 625 EVSEs
    evses = scenario.tree.evses
    v2g = [e for e in evses if e.v2g_capable]
    # binomial(625, 0.4): standard deviation ~2 percentage points; allow ~5 of them
    assert 0.30 <= len(v2g) / len(evses) <= 0.50
    assert all(e.ocpp_version is OcppVersion.V21 and e.can_discharge for e in v2g)


def test_generated_fleet_plans_without_errors() -> None:
    scenario = generate_fleet(60, seed=3)
    problem, index = build_problem(scenario)
    assert problem.n_sessions == 60  # every session lies in the horizon
    assert len(index.intervals) == 96
    assert problem.n_evses == len(scenario.tree.evses)
