"""``build_problem`` / ``to_schedule`` on small scenarios built in code, checked by hand.

The horizon is 12:00-14:00 UTC in eight 15-minute intervals; interval ``t`` starts at
12:00 + 15 min * t.  The grid is one feeder with two sites: site-a has A-01 (11 kW) and
A-02 (11 kW, V2G 10 kW on OCPP 2.1), site-b has B-01 (11 kW).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aggregator.model import (
    DemandCharge,
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    ModelError,
    NodeKind,
    NodeLoad,
    OcppVersion,
    PriceSignal,
    Session,
)
from aggregator.planning import build_problem, to_schedule
from aggregator.scenario import PlanSettings, Scenario
from optimizer import solve
from optimizer.solution import Solution

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)
N_T = 8
INF = float("inf")


def at(hh: int, mm: int = 0) -> datetime:
    """A UTC moment on the scenario day."""
    return datetime(2026, 11, 20, hh, mm, tzinfo=UTC)


TREE = GridTree(
    (GridNode("feeder", NodeKind.FEEDER),
     GridNode("site-a", NodeKind.SITE, parent_id="feeder"),
     GridNode("site-b", NodeKind.SITE, parent_id="feeder")),
    (Evse("A-01", "site-a", max_import_kw=11.0),
     Evse("A-02", "site-a", max_import_kw=11.0, max_export_kw=10.0, v2g_capable=True,
          ocpp_version=OcppVersion.V21),
     Evse("B-01", "site-b", max_import_kw=11.0)))
NODE_ROW = {"feeder": 0, "site-a": 1, "site-b": 2}
EVSE_ROW = {"A-01": 0, "A-02": 1, "B-01": 2}


def cap(node_id: str, start: datetime, end: datetime, ref: str, **limits: Any) -> GridConstraint:
    return GridConstraint(node_id=node_id, start=start, end=end, source="openadr",
                          source_ref=ref, received_at=T0 - timedelta(hours=3), **limits)


def session(session_id: str, evse_id: str, arrival: datetime, departure: datetime,
            **overrides: Any) -> Session:
    values: dict[str, Any] = {"battery_capacity_kwh": 60.0, "soc_initial": 0.5,
                              "max_charge_kw": 11.0, "energy_requested_kwh": 6.0}
    values.update(overrides)
    return Session(session_id, evse_id, arrival, departure, **values)


def scenario(**parts: Any) -> Scenario:
    return Scenario(name="small", start=T0, interval=STEP, n_intervals=N_T, tree=TREE, **parts)


# --- caps ---------------------------------------------------------------------------------

def overlapping_feeder_caps() -> list[GridConstraint]:
    return [
        GridConstraint(node_id="feeder", start=T0, end=at(14), source="rating",
                       source_ref="nodes[0]", received_at=T0, import_max_kw=100.0),
        cap("feeder", at(12, 30), at(13, 30), "evt-1", import_max_kw=60.0),
        cap("feeder", at(13), at(14), "evt-2", import_max_kw=80.0),
    ]


@pytest.mark.parametrize("reverse", [False, True])
def test_most_restrictive_cap_wins_and_names_its_source(reverse: bool) -> None:
    rating, evt1, evt2 = overlapping_feeder_caps()
    given = [rating, evt1, evt2]
    problem, index = build_problem(scenario(constraints=tuple(reversed(given) if reverse
                                                              else given)))
    # t 0-1: only the rating (100); t 2-5: evt-1 (60 < 80 < 100); t 6-7: evt-2 (80 < 100)
    expected_kw = [100, 100, 60, 60, 60, 60, 80, 80]
    expected_source = [rating, rating, evt1, evt1, evt1, evt1, evt2, evt2]
    np.testing.assert_array_equal(problem.node_import_max_kw[NODE_ROW["feeder"]], expected_kw)
    for t, source in enumerate(expected_source):
        assert index.cap_sources[("feeder", "import", t)] is source
    # nothing else is capped and no export source is invented
    assert np.all(np.isinf(problem.node_export_max_kw))
    assert np.all(np.isinf(problem.node_import_max_kw[[NODE_ROW["site-a"], NODE_ROW["site-b"]]]))
    assert set(index.cap_sources) == {("feeder", "import", t) for t in range(N_T)}


def test_cap_touching_part_of_an_interval_applies_to_the_whole_interval() -> None:
    # 12:20-12:40 touches [12:15, 12:30) and [12:30, 12:45): intervals 1 and 2
    c = cap("site-a", at(12, 20), at(12, 40), "evt-part", import_max_kw=30.0,
            export_max_kw=5.0)
    problem, index = build_problem(scenario(constraints=(c,)))
    row = NODE_ROW["site-a"]
    np.testing.assert_array_equal(problem.node_import_max_kw[row],
                                  [INF, 30, 30, INF, INF, INF, INF, INF])
    np.testing.assert_array_equal(problem.node_export_max_kw[row],
                                  [INF, 5, 5, INF, INF, INF, INF, INF])
    assert set(index.cap_sources) == {("site-a", d, t) for d in ("import", "export")
                                      for t in (1, 2)}


def test_cap_on_interval_boundaries_does_not_spill_into_neighbours() -> None:
    c = cap("site-b", at(12, 30), at(13), "evt-exact", import_max_kw=30.0)
    problem, _ = build_problem(scenario(constraints=(c,)))
    np.testing.assert_array_equal(problem.node_import_max_kw[NODE_ROW["site-b"]],
                                  [INF, INF, 30, 30, INF, INF, INF, INF])


def test_expired_constraint_does_not_apply() -> None:
    # window 12:00-14:00, expired from 13:00: intervals 4-7 (13:00 onwards) are not capped
    expiring = GridConstraint(node_id="feeder", start=T0, end=at(14), source="openadr",
                              source_ref="evt-exp", received_at=T0, import_max_kw=50.0,
                              expires_at=at(13))
    problem, index = build_problem(scenario(constraints=(expiring,)))
    np.testing.assert_array_equal(problem.node_import_max_kw[NODE_ROW["feeder"]],
                                  [50, 50, 50, 50, INF, INF, INF, INF])
    assert sorted(t for (_, _, t) in index.cap_sources) == [0, 1, 2, 3]


def test_constraint_expired_before_the_horizon_applies_nowhere() -> None:
    stale = GridConstraint(node_id="feeder", start=at(11), end=at(14), source="openadr",
                           source_ref="evt-stale", received_at=at(10), import_max_kw=50.0,
                           expires_at=at(11, 30))
    problem, index = build_problem(scenario(constraints=(stale,)))
    assert np.all(np.isinf(problem.node_import_max_kw))
    assert index.cap_sources == {}


def test_expiry_inside_an_interval_still_caps_that_interval() -> None:
    # active 12:00-13:05; the active part touches [13:00, 13:15) so interval 4 is capped
    expiring = GridConstraint(node_id="feeder", start=T0, end=at(14), source="openadr",
                              source_ref="evt-exp", received_at=T0, import_max_kw=50.0,
                              expires_at=at(13, 5))
    problem, _ = build_problem(scenario(constraints=(expiring,)))
    np.testing.assert_array_equal(problem.node_import_max_kw[NODE_ROW["feeder"]],
                                  [50, 50, 50, 50, 50, INF, INF, INF])


def test_constraints_outside_the_horizon_are_ignored() -> None:
    before = cap("feeder", at(10), at(12), "evt-before", import_max_kw=10.0)  # ends at start
    after = cap("feeder", at(14), at(15), "evt-after", import_max_kw=10.0)  # starts at end
    problem, index = build_problem(scenario(constraints=(before, after)))
    assert np.all(np.isinf(problem.node_import_max_kw))
    assert index.cap_sources == {}


def test_evse_constraint_lowers_that_evses_import_bound() -> None:
    lower = cap("A-01", at(12, 30), at(13), "evse-limit", import_max_kw=5.0)
    higher = cap("B-01", T0, at(14), "evse-above-rating", import_max_kw=20.0)
    problem, index = build_problem(scenario(constraints=(lower, higher)))
    np.testing.assert_array_equal(problem.evse_import_max_kw[EVSE_ROW["A-01"]],
                                  [11, 11, 5, 5, 11, 11, 11, 11])
    # a limit above the 11 kW rating changes nothing; other EVSEs keep their rating
    np.testing.assert_array_equal(problem.evse_import_max_kw[EVSE_ROW["B-01"]], [11] * N_T)
    np.testing.assert_array_equal(problem.evse_import_max_kw[EVSE_ROW["A-02"]], [11] * N_T)
    assert set(index.cap_sources) == {("A-01", "import", 2), ("A-01", "import", 3)}
    assert index.cap_sources[("A-01", "import", 2)] is lower
    # an EVSE-level limit is not a node cap
    assert np.all(np.isinf(problem.node_import_max_kw))


def test_evse_export_bounds_follow_v2g_and_evse_constraints() -> None:
    limit = cap("A-02", at(13), at(13, 30), "evse-export", export_max_kw=4.0)
    problem, _ = build_problem(scenario(constraints=(limit,)))
    np.testing.assert_array_equal(problem.evse_export_max_kw[EVSE_ROW["A-02"]],
                                  [10, 10, 10, 10, 4, 4, 10, 10])
    # EVSEs that cannot discharge have a zero export bound
    np.testing.assert_array_equal(problem.evse_export_max_kw[EVSE_ROW["A-01"]], [0] * N_T)
    np.testing.assert_array_equal(problem.evse_export_max_kw[EVSE_ROW["B-01"]], [0] * N_T)
    np.testing.assert_allclose(problem.evse_min_kw, [4.14, 4.14, 4.14])


def test_setpoint_on_an_evse_raises_model_error() -> None:
    bad = cap("A-01", T0, at(13), "evse-setpoint", setpoint_kw=3.0)
    with pytest.raises(ModelError) as caught:
        build_problem(scenario(constraints=(bad,)))
    assert caught.value.field == "setpoint_kw"
    assert "evse-setpoint" in str(caught.value)


def test_setpoint_on_a_node_and_its_precedence() -> None:
    low = GridConstraint(node_id="feeder", start=T0, end=at(13), source="openadr",
                         source_ref="sp-low", received_at=T0, setpoint_kw=20.0, priority=1)
    high = GridConstraint(node_id="feeder", start=at(12, 30), end=at(13, 30), source="openadr",
                          source_ref="sp-high", received_at=T0 - timedelta(hours=1),
                          setpoint_kw=-5.0, priority=2)
    newer = GridConstraint(node_id="feeder", start=at(13, 30), end=at(14), source="openadr",
                           source_ref="sp-newer", received_at=T0 + timedelta(minutes=1),
                           setpoint_kw=7.0, priority=2)
    older = GridConstraint(node_id="feeder", start=at(13, 30), end=at(14), source="openadr",
                           source_ref="sp-older", received_at=T0, setpoint_kw=9.0, priority=2)
    for order in ((low, high, newer, older), (older, newer, high, low)):
        problem, _ = build_problem(scenario(constraints=order))
        # higher priority wins; at equal priority the later-received one wins
        np.testing.assert_array_equal(problem.node_setpoint_kw[NODE_ROW["feeder"]],
                                      [20, 20, -5, -5, -5, -5, 7, 7])
        assert np.all(np.isnan(problem.node_setpoint_kw[NODE_ROW["site-a"]]))


def test_setpoint_tie_break_by_received_at_holds_at_large_priorities() -> None:
    # received_at must break the tie exactly, also at the largest priority scenario files
    # accept (1e9), where an hour is far below a float's resolution of priority + seconds
    priority = 1_000_000_000
    older = GridConstraint(node_id="feeder", start=T0, end=at(14), source="openadr",
                           source_ref="sp-older", received_at=T0, setpoint_kw=9.0,
                           priority=priority)
    newer = GridConstraint(node_id="feeder", start=T0, end=at(14), source="openadr",
                           source_ref="sp-newer", received_at=T0 + timedelta(hours=1),
                           setpoint_kw=7.0, priority=priority)
    for order in ((older, newer), (newer, older)):
        problem, _ = build_problem(scenario(constraints=order))
        np.testing.assert_array_equal(problem.node_setpoint_kw[NODE_ROW["feeder"]], [7.0] * N_T)


# --- prices and base loads -------------------------------------------------------------------

def test_prices_are_time_weighted_and_default_where_uncovered() -> None:
    prices = (
        PriceSignal(T0, at(12, 30), 0.40, 0.10),  # intervals 0 and 1 in full
        PriceSignal(at(12, 30), at(12, 35), 0.10, 0.05),  # first 5 min of interval 2
        PriceSignal(at(12, 35), at(12, 45), 0.40, 0.20),  # last 10 min of interval 2
        PriceSignal(at(12, 45), at(12, 50), 0.55, 0.30),  # 5 min of interval 3, rest default
    )
    settings = PlanSettings(default_import_price_per_kwh=0.25,
                            default_export_price_per_kwh=0.0)
    problem, _ = build_problem(scenario(prices=prices, settings=settings))
    import_2 = (5 * 0.10 + 10 * 0.40) / 15  # 0.30
    export_2 = (5 * 0.05 + 10 * 0.20) / 15  # 0.15
    import_3 = (5 * 0.55 + 10 * 0.25) / 15  # 0.35 (10 min at the default)
    export_3 = (5 * 0.30 + 10 * 0.0) / 15  # 0.10
    np.testing.assert_allclose(problem.import_price_per_kwh,
                               [0.40, 0.40, import_2, import_3, 0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(problem.export_price_per_kwh,
                               [0.10, 0.10, export_2, export_3, 0.0, 0.0, 0.0, 0.0])
    assert import_2 == pytest.approx(0.30) and import_3 == pytest.approx(0.35)


def test_prices_without_signals_are_the_defaults() -> None:
    settings = PlanSettings(default_import_price_per_kwh=0.31, default_export_price_per_kwh=0.04)
    problem, _ = build_problem(scenario(settings=settings))
    np.testing.assert_allclose(problem.import_price_per_kwh, [0.31] * N_T)
    np.testing.assert_allclose(problem.export_price_per_kwh, [0.04] * N_T)


def test_base_loads_are_interval_averaged() -> None:
    loads = (
        NodeLoad("site-a", T0, at(12, 20), 30.0),  # all of interval 0, 5 of 15 min of 1
        NodeLoad("site-a", at(12, 10), at(12, 15), 60.0),  # 5 min of interval 0, adds up
        NodeLoad("site-b", at(13, 50), at(15), -12.0),  # PV: 10 min of interval 7
        NodeLoad("site-b", at(11), at(11, 30), 99.0),  # before the horizon
        NodeLoad("feeder", T0, at(14), 5.0),
    )
    problem, _ = build_problem(scenario(loads=loads))
    np.testing.assert_allclose(problem.node_base_load_kw[NODE_ROW["site-a"]],
                               [30 + 60 * 5 / 15, 30 * 5 / 15, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(problem.node_base_load_kw[NODE_ROW["site-b"]],
                               [0, 0, 0, 0, 0, 0, 0, -12 * 10 / 15])
    # the node's own load only; subtree sums are the optimizer's business
    np.testing.assert_allclose(problem.node_base_load_kw[NODE_ROW["feeder"]], [5.0] * N_T)
    np.testing.assert_allclose(problem.subtree_base_load_kw()[NODE_ROW["feeder"]],
                               [5 + 50, 5 + 10, 5, 5, 5, 5, 5, 5 - 8])


# --- demand charges -------------------------------------------------------------------------

def demand_charge(node_id: str, start: datetime, end: datetime, price_per_kw: float,
                  ref: str) -> DemandCharge:
    return DemandCharge(node_id=node_id, start=start, end=end, price_per_kw=price_per_kw,
                        source="openadr", source_ref=ref, received_at=T0 - timedelta(hours=1))


def test_demand_charges_become_peak_windows_over_the_intervals_they_touch() -> None:
    """12:20-13:00 touches intervals 1-3; 13:50-15:00 touches interval 7 and is clipped at
    the horizon; 10:00-12:00 ends where the horizon starts and is left out."""
    charges = (demand_charge("site-a", at(12, 20), at(13), 4.0, "dc-site"),
               demand_charge("feeder", at(13, 50), at(15), 2.5, "dc-feeder"),
               demand_charge("site-b", at(10), at(12), 9.0, "dc-before"))
    problem, index = build_problem(scenario(demand_charges=charges))
    assert problem.peak_node.tolist() == [NODE_ROW["site-a"], NODE_ROW["feeder"]]
    assert problem.peak_start.tolist() == [1, 7] and problem.peak_end.tolist() == [4, 8]
    assert problem.peak_price_per_kw.tolist() == [4.0, 2.5]
    assert index.peak_sources == charges[:2]
    assert build_problem(scenario())[0].n_peaks == 0


def test_a_demand_charge_lowers_the_planned_peak_of_its_node() -> None:
    """Two EVs on site-a want 6 kWh each within the two hours.  Flat prices: the plan
    charges both at 11 kW first; with 1 per kW on site-a's peak it spreads the same
    energy to a flat 12 / 0.95 / 2 = 6.3 kW and the schedule reports the charge."""
    sessions = (session("s-1", "A-01", T0, at(14)), session("s-2", "A-02", T0, at(14)))
    plain_problem, plain_index = build_problem(scenario(sessions=sessions))
    plain = to_schedule(solve(plain_problem), plain_problem, plain_index)
    charge = demand_charge("site-a", T0, at(14), 1.0, "dc-site")
    problem, index = build_problem(scenario(sessions=sessions, demand_charges=(charge,)))
    charged = to_schedule(solve(problem), problem, index)
    plain_peak = plain.node_load_kw(TREE, "site-a").max()
    peak = charged.node_load_kw(TREE, "site-a").max()
    assert plain_peak == pytest.approx(22.0)
    assert peak == pytest.approx(12 / 0.95 / 2, abs=1e-6)
    assert charged.unmet_kwh.sum() == pytest.approx(plain.unmet_kwh.sum(), abs=1e-9)
    assert charged.solver_stats["demand_charge_cost"] == pytest.approx(peak, abs=1e-6)


# --- sessions ----------------------------------------------------------------------------

def session_span(problem: Any, index: Any, session_id: str) -> tuple[int, int]:
    k = [s.session_id for s in index.sessions].index(session_id)
    return int(problem.session_start[k]), int(problem.session_end[k])


def test_sessions_get_only_the_intervals_they_are_present_for_in_full() -> None:
    sessions = (
        session("partial", "A-01", at(12, 10), at(13, 20)),  # ceil(10/15)=1, floor(80/15)=5
        session("aligned", "A-02", at(12, 15), at(13)),  # exactly intervals 1-3
        session("early", "B-01", at(11), at(12, 40)),  # from the start, floor(40/15)=2
        session("blip", "B-01", at(12, 50), at(12, 55)),  # inside interval 3: nothing
        session("late", "B-01", at(13, 5), at(15)),  # ceil(65/15)=5 to the horizon end
    )
    problem, index = build_problem(scenario(sessions=sessions))
    assert session_span(problem, index, "partial") == (1, 5)
    assert session_span(problem, index, "aligned") == (1, 4)
    assert session_span(problem, index, "early") == (0, 2)
    start, end = session_span(problem, index, "blip")
    assert start == end  # no usable interval
    assert session_span(problem, index, "late") == (5, N_T)
    charge = problem.session_charge_kw()
    k = [s.session_id for s in index.sessions].index("partial")
    np.testing.assert_array_equal(charge[k], [0, 11, 11, 11, 11, 0, 0, 0])


def test_session_departing_after_the_horizon_gets_a_pro_rata_target() -> None:
    sessions = (
        # present 13:00-16:00, horizon ends 14:00: 1 of 3 hours -> a third of 12 kWh
        session("leaves-late", "A-01", at(13), at(16), battery_capacity_kwh=60.0,
                soc_initial=0.5, energy_requested_kwh=12.0),
        # already plugged in at 10:00; counted from the horizon start: 2 of 4 hours
        session("arrived-early", "A-02", at(10), at(16), battery_capacity_kwh=50.0,
                soc_initial=0.2, energy_requested_kwh=None, target_soc=0.8),
        session("inside", "B-01", at(12), at(13, 30), battery_capacity_kwh=40.0,
                soc_initial=0.25, energy_requested_kwh=8.0),
    )
    problem, index = build_problem(scenario(sessions=sessions))
    by_id = {s.session_id: k for k, s in enumerate(index.sessions)}
    target = problem.session_energy_target_kwh
    initial = problem.session_energy_initial_kwh
    assert initial[by_id["leaves-late"]] == pytest.approx(30.0)
    assert target[by_id["leaves-late"]] == pytest.approx(30.0 + 12.0 / 3)
    assert initial[by_id["arrived-early"]] == pytest.approx(10.0)
    assert target[by_id["arrived-early"]] == pytest.approx(10.0 + (40.0 - 10.0) / 2)
    assert target[by_id["inside"]] == pytest.approx(10.0 + 8.0)


def test_sessions_entirely_outside_the_horizon_are_dropped() -> None:
    sessions = (
        session("gone", "A-01", at(10), at(11)),
        session("ends-at-start", "B-01", at(9), at(12)),
        session("starts-at-end", "A-01", at(14), at(15)),
        session("kept", "A-02", at(11), at(12, 30)),
    )
    problem, index = build_problem(scenario(sessions=sessions))
    assert [s.session_id for s in index.sessions] == ["kept"]
    assert problem.session_names == ("kept",)
    assert problem.n_sessions == 1
    assert int(problem.session_evse[0]) == EVSE_ROW["A-02"]


def test_plan_index_maps_ids_and_utc_intervals() -> None:
    problem, index = build_problem(scenario())
    assert index.intervals.equals(pd.date_range(T0, periods=N_T, freq=STEP, tz="UTC"))
    assert str(index.intervals.tz) == "UTC"
    assert index.interval == STEP
    assert problem.interval_h == pytest.approx(0.25)
    assert index.node_ids == ("feeder", "site-a", "site-b")
    assert index.evse_ids == ("A-01", "A-02", "B-01")
    np.testing.assert_array_equal(problem.node_parent, [-1, 0, 0])
    np.testing.assert_array_equal(problem.evse_node, [1, 1, 2])


# --- to_schedule ----------------------------------------------------------------------------

def two_on_a01() -> Scenario:
    return scenario(sessions=(
        session("first", "A-01", T0, at(12, 45)),  # intervals 0-2
        session("second", "A-01", at(12, 45), at(14)),  # intervals 3-7
        session("v2g", "A-02", at(12, 30), at(13, 30), max_discharge_kw=10.0),  # 2-5
    ))


def test_to_schedule_builds_utc_frames_and_sums_sessions_per_evse() -> None:
    problem, index = build_problem(two_on_a01())
    charge = np.array([
        [4.0, 5.0, 6.0, 0, 0, 0, 0, 0],
        [0, 0, 0, 7.0, 8.0, 0, 0, 9.0],
        [0, 0, 1.0, 0, 2.0, 0, 0, 0]])
    discharge = np.array([
        [0.0] * N_T,
        [0.0] * N_T,
        [0, 0, 0, 3.0, 0, 4.0, 0, 0]])
    energy = np.full((3, N_T), np.nan)
    energy[0, 0:3] = [31.0, 32.0, 33.0]
    energy[1, 3:8] = [31.0, 33.0, 33.0, 33.0, 35.0]
    energy[2, 2:6] = [30.0, 29.0, 30.0, 27.0]
    solution = Solution(status="optimal", charge_kw=charge, discharge_kw=discharge,
                        energy_kwh=energy, unmet_kwh=np.array([0.0, 1.5, 0.0]),
                        objective=12.5, stats={"method": "hand"}, binding=("x",),
                        warnings=("w",))
    schedule = to_schedule(solution, problem, index)
    expected_index = pd.date_range(T0, periods=N_T, freq=STEP, tz="UTC")
    for frame in (schedule.power_kw, schedule.session_power_kw, schedule.soc):
        assert isinstance(frame.index, pd.DatetimeIndex)
        assert frame.index.equals(expected_index)
        assert str(frame.index.tz) == "UTC"
    assert list(schedule.power_kw.columns) == ["A-01", "A-02", "B-01"]
    assert list(schedule.session_power_kw.columns) == ["first", "second", "v2g"]
    np.testing.assert_allclose(schedule.power_kw["A-01"], [4, 5, 6, 7, 8, 0, 0, 9])
    np.testing.assert_allclose(schedule.power_kw["A-02"], [0, 0, 1, -3, 2, -4, 0, 0])
    np.testing.assert_allclose(schedule.power_kw["B-01"], [0.0] * N_T)
    np.testing.assert_allclose(schedule.session_power_kw["v2g"], [0, 0, 1, -3, 2, -4, 0, 0])
    np.testing.assert_allclose(schedule.soc["first"].iloc[:3], [31 / 60, 32 / 60, 33 / 60])
    assert schedule.soc["first"].iloc[3:].isna().all()
    assert schedule.unmet_kwh.to_dict() == {"first": 0.0, "second": 1.5, "v2g": 0.0}
    assert schedule.interval == STEP
    assert (schedule.objective, schedule.status) == (12.5, "optimal")
    # binding is explained from the plan itself (no caps here, one session left short)
    assert len(schedule.binding) == 1
    assert schedule.binding[0].startswith("second: 1.500 kWh unmet at departure")
    assert schedule.warnings == ("w",)


def test_to_schedule_of_a_solved_problem_is_consistent() -> None:
    problem, index = build_problem(two_on_a01())
    solution = solve(problem)
    assert solution.ok
    schedule = to_schedule(solution, problem, index)
    per_session = schedule.session_power_kw
    np.testing.assert_allclose(schedule.power_kw["A-01"],
                               per_session["first"] + per_session["second"], atol=1e-9)
    np.testing.assert_allclose(schedule.power_kw["A-02"], per_session["v2g"], atol=1e-9)
    np.testing.assert_allclose(schedule.power_kw["B-01"], 0.0, atol=1e-9)
    # each session is idle outside its usable intervals and has an SoC only inside them
    for k, s in enumerate(index.sessions):
        start, end = int(problem.session_start[k]), int(problem.session_end[k])
        outside = np.r_[0:start, end:N_T]
        np.testing.assert_allclose(per_session[s.session_id].iloc[outside], 0.0, atol=1e-9)
        assert schedule.soc[s.session_id].iloc[start:end].notna().all()
        assert schedule.soc[s.session_id].iloc[outside].isna().all()



def test_binding_caps_are_explained_with_times_and_provenance() -> None:
    # 60 kW of office load under the feeder: evt-1 (60 kW) leaves no room for the EVs and
    # evt-2 (80 kW) leaves 20 of the 22 kW they want while they still need energy
    sessions = (session("s-a", "A-01", T0, at(14), energy_requested_kwh=20.0),
                session("s-b", "B-01", T0, at(14), energy_requested_kwh=20.0))
    office = NodeLoad("site-a", T0, at(14), 60.0)
    problem, index = build_problem(scenario(constraints=tuple(overlapping_feeder_caps()),
                                            sessions=sessions, loads=(office,)))
    schedule = to_schedule(solve(problem), problem, index)
    assert "feeder: import cap 60 kW binds 2026-11-20 12:30-13:30 UTC, set by openadr evt-1" \
        in schedule.binding
    assert any(line.startswith("feeder: import cap 80 kW binds 2026-11-20 13:30-14:00 UTC")
               and line.endswith("set by openadr evt-2") for line in schedule.binding)


def test_unmet_energy_is_explained_with_the_departure_time() -> None:
    tight = cap("site-a", T0, at(14), "evt-tight", import_max_kw=1.0)
    sessions = (session("s-a", "A-01", T0, at(13), energy_requested_kwh=10.0),)
    problem, index = build_problem(scenario(constraints=(tight,), sessions=sessions))
    schedule = to_schedule(solve(problem), problem, index)
    # 1 kW for 1 h at 95 %: 0.95 kWh of 10 kWh
    assert "s-a: 9.050 kWh unmet at departure 2026-11-20 13:00 UTC" in schedule.binding
    assert any("set by openadr evt-tight" in line for line in schedule.binding)


def test_a_plan_fills_an_ev_to_its_target_only_unless_it_takes_more() -> None:
    """Negative prices pay for charging, but an EV stops at its target: a plan that counts
    on more would not be followed; an EV that says it takes more (max_soc) gets more."""
    prices = (PriceSignal(T0, at(14), -0.20, -0.30),)
    wants = session("wants-6", "A-01", T0, at(14))  # 30 kWh in a 60 kWh battery, +6 kWh
    takes_more = session("takes-80", "B-01", T0, at(14), max_soc=0.8)
    problem, index = build_problem(scenario(sessions=(wants, takes_more), prices=prices))
    plan = to_schedule(solve(problem), problem, index)
    by_id = {s.session_id: k for k, s in enumerate(index.sessions)}
    assert problem.session_capacity_kwh[by_id["wants-6"]] == pytest.approx(36.0)
    assert problem.session_capacity_kwh[by_id["takes-80"]] == pytest.approx(48.0)
    assert plan.soc["wants-6"].iloc[-1] == pytest.approx(0.6, abs=1e-6)  # of 60 kWh
    assert plan.soc["takes-80"].iloc[-1] == pytest.approx(0.8, abs=1e-6)
    assert wants.energy_ceiling_kwh == pytest.approx(36.0)
