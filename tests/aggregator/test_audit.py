"""Independent cap and EVSE-limit checks: clean on optimizer output, loud on doctored plans.

Facts of ``scenarios/office-evening-cap.yaml`` used below (read from the file):
site-a has A-01..A-12 (A-11, A-12 V2G 10 kW), site-b has B-01..B-08 (B-07, B-08 V2G);
ratings feeder-1 import 250 kW (``nodes[0]``), site-a 160/50 kW (``nodes[1]``), site-b
120/50 kW (``nodes[2]``); DSO caps feeder-1 import 90 kW 16:00-20:00
(``evt-evening-peak/mod-1``) and site-a export 20 kW 12:00-15:00 (``evt-export-cap/mod-0``);
base load at 13:00 site-a 55 kW, site-b 42 kW; at 17:00 site-a 35 kW, site-b 28 kW.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from aggregator.audit import (
    TOLERANCE_KW,
    Violation,
    cap_violations,
    evse_limit_violations,
    firm_caps,
    node_base_load_kw,
)
from aggregator.model import (
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    NodeKind,
    NodeLoad,
    Schedule,
)
from aggregator.scenario import Scenario

from .conftest import Solved

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)


def at(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 20, hh, mm, tzinfo=UTC)


def with_evse_row(schedule: Schedule, moment: datetime, values: dict[str, float]) -> Schedule:
    """A copy of ``schedule`` whose EVSE powers at ``moment`` are ``values`` (others 0)."""
    power = schedule.power_kw.copy()
    power.loc[pd.Timestamp(moment)] = 0.0
    for evse_id, kw in values.items():
        power.loc[pd.Timestamp(moment), evse_id] = kw
    return dataclasses.replace(schedule, power_kw=power)


def with_cell(schedule: Schedule, moment: datetime, evse_id: str, session_id: str,
              kw: float) -> Schedule:
    """A copy of ``schedule`` where one session (and its EVSE) runs at ``kw`` at ``moment``."""
    power = schedule.power_kw.copy()
    sessions = schedule.session_power_kw.copy()
    power.loc[pd.Timestamp(moment), evse_id] = kw
    sessions.loc[pd.Timestamp(moment), session_id] = kw
    return dataclasses.replace(schedule, power_kw=power, session_power_kw=sessions)


def key(v: Violation) -> tuple[str, datetime, str, float, str, str]:
    return (v.node_id, v.interval_start, v.direction, v.limit_kw, v.source, v.source_ref)


# --- cap_violations -------------------------------------------------------------------------

def test_optimizer_schedule_of_the_shipped_scenario_has_no_violations(
        shipped_solved: Solved) -> None:
    assert cap_violations(shipped_solved.scenario, shipped_solved.schedule) == []
    assert evse_limit_violations(shipped_solved.scenario, shipped_solved.schedule) == []


def test_doctored_import_above_the_evening_cap_is_found(shipped_solved: Solved) -> None:
    scenario = shipped_solved.scenario
    every_evse = {evse.evse_id: 11.0 for evse in scenario.tree.evses}
    doctored = with_evse_row(shipped_solved.schedule, at(17), every_evse)
    found = cap_violations(scenario, doctored)
    # feeder: 20 x 11 + 35 + 28 = 283 kW, over its 250 kW rating and the 90 kW DSO cap;
    # site-a: 12 x 11 + 35 = 167 > 160; site-b: 8 x 11 + 28 = 116 <= 120
    assert sorted(key(v) for v in found) == sorted([
        ("feeder-1", at(17), "import", 250.0, "rating", "nodes[0]"),
        ("feeder-1", at(17), "import", 90.0, "openadr", "evt-evening-peak/mod-1"),
        ("site-a", at(17), "import", 160.0, "rating", "nodes[1]"),
    ])
    flows = {(v.node_id, v.limit_kw): v.flow_kw for v in found}
    assert flows[("feeder-1", 250.0)] == pytest.approx(283.0)
    assert flows[("feeder-1", 90.0)] == pytest.approx(283.0)
    assert flows[("site-a", 160.0)] == pytest.approx(167.0)
    assert all(isinstance(v.interval_start, datetime) and v.interval_start.utcoffset()
               == timedelta(0) for v in found)


def test_doctored_export_above_the_midday_export_cap_is_found(shipped_solved: Solved) -> None:
    scenario = shipped_solved.scenario
    # site-a: -100 + 55 base = 45 kW export: over the 20 kW DSO cap, under the 50 kW rating;
    # feeder-1: -45 + 42 = -3 kW and it has no export cap
    doctored = with_evse_row(shipped_solved.schedule, at(13), {"A-11": -100.0})
    found = cap_violations(scenario, doctored)
    assert [key(v) for v in found] == [
        ("site-a", at(13), "export", 20.0, "openadr", "evt-export-cap/mod-0")]
    assert found[0].flow_kw == pytest.approx(45.0)


# --- small scenarios built in code -------------------------------------------------------------

TREE = GridTree(
    (GridNode("feeder", NodeKind.FEEDER),
     GridNode("site-a", NodeKind.SITE, parent_id="feeder")),
    (Evse("A-01", "site-a", max_import_kw=11.0), Evse("A-02", "site-a", max_import_kw=11.0)))


def small(constraints: tuple[GridConstraint, ...],
          loads: tuple[NodeLoad, ...] = ()) -> Scenario:
    return Scenario(name="small", start=T0, interval=STEP, n_intervals=8, tree=TREE,
                    constraints=constraints, loads=loads)


def flat_schedule(a01_kw: list[float], a02_kw: list[float] | None = None) -> Schedule:
    index = pd.date_range(T0, periods=8, freq=STEP, tz="UTC")
    power = pd.DataFrame({"A-01": a01_kw, "A-02": a02_kw or [0.0] * 8}, index=index)
    empty = pd.DataFrame(index=index)
    return Schedule(power_kw=power, session_power_kw=empty, soc=empty,
                    unmet_kwh=pd.Series(dtype=float), interval=STEP, objective=0.0,
                    status="optimal", solver_stats={})


def limit(node_id: str, start: datetime, end: datetime, ref: str, *,
          expires_at: datetime | None = None, import_max_kw: float | None = None,
          export_max_kw: float | None = None) -> GridConstraint:
    return GridConstraint(node_id=node_id, start=start, end=end, source="openadr",
                          source_ref=ref, received_at=T0, import_max_kw=import_max_kw,
                          export_max_kw=export_max_kw, expires_at=expires_at)


def test_evse_level_cap_is_checked_on_the_evse_in_every_interval_it_touches() -> None:
    # 12:20-12:40 touches intervals 12:15 and 12:30
    c = limit("A-01", at(12, 20), at(12, 40), "evse-cap", import_max_kw=5.0)
    found = cap_violations(small((c,)), flat_schedule([6.0] * 8))
    assert [key(v) for v in found] == [
        ("A-01", at(12, 15), "import", 5.0, "openadr", "evse-cap"),
        ("A-01", at(12, 30), "import", 5.0, "openadr", "evse-cap")]
    assert all(v.flow_kw == pytest.approx(6.0) for v in found)


def test_expired_constraint_is_not_checked_after_expiry() -> None:
    c = limit("feeder", T0, at(14), "evt-exp", import_max_kw=5.0, expires_at=at(13))
    found = cap_violations(small((c,)), flat_schedule([6.0] * 8))
    assert [v.interval_start for v in found] == [at(12), at(12, 15), at(12, 30), at(12, 45)]


def test_node_flow_includes_ev_power_and_base_load_below_the_node() -> None:
    c = limit("feeder", T0, at(14), "evt-feeder", import_max_kw=20.0)
    load = NodeLoad("site-a", T0, at(14), 18.0)
    scenario = small((c,), (load,))
    # 18 kW base + 1 + 1 kW EV = 20 kW is at the cap; 18 + 2 + 1 = 21 kW is over
    a01 = [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 + TOLERANCE_KW / 2]
    found = cap_violations(scenario, flat_schedule(a01, [1.0] * 8))
    assert [(v.interval_start, v.node_id) for v in found] == [(at(12, 15), "feeder")]
    assert found[0].flow_kw == pytest.approx(21.0)
    np.testing.assert_allclose(node_base_load_kw(scenario, "feeder", flat_schedule(a01)
                                                 .intervals), [18.0] * 8)


def test_export_cap_on_a_node_counts_discharge_as_export() -> None:
    c = limit("site-a", T0, at(14), "evt-export", export_max_kw=8.0)
    found = cap_violations(small((c,)), flat_schedule([-5.0] * 8, [-4.0] + [-3.0] * 7))
    assert [(v.interval_start, v.direction) for v in found] == [(at(12), "export")]
    assert found[0].flow_kw == pytest.approx(9.0)
    assert found[0].limit_kw == 8.0


# --- firm_caps ------------------------------------------------------------------------------

def test_no_cap_rests_on_one_evs_charging_offsetting_anothers_discharging() -> None:
    export = limit("site-a", T0, at(13), "evt-export", export_max_kw=15.0)
    imports = limit("site-a", at(13), at(14), "evt-import", import_max_kw=10.0)
    scenario = small((export, imports))
    # 12:00-13:00: A-02 discharges 20 while A-01 charges 5 (net export 15, at the cap: if
    # A-01's car stops, 20 kW leave the site); 13:00-14:00: A-01 charges 12 while A-02
    # gives back 2 (net import 10: if A-02 stops, 12 kW come in)
    plan = flat_schedule([5.0] * 4 + [12.0] * 4, [-20.0] * 4 + [-2.0] * 4)
    assert cap_violations(scenario, plan) == []  # on the net flow it looks fine
    firm, trimmed = firm_caps(scenario, plan)
    assert trimmed == 8
    np.testing.assert_allclose(firm.power_kw["A-02"], [-15.0] * 4 + [-2.0] * 4)
    np.testing.assert_allclose(firm.power_kw["A-01"], [5.0] * 4 + [10.0] * 4)
    assert cap_violations(scenario, firm) == []
    assert firm_caps(scenario, firm) == (firm, 0)  # already firm: left as it is


def test_firm_caps_count_base_load_and_share_the_cut_in_proportion() -> None:
    feeder = limit("feeder", T0, at(14), "evt-feeder", import_max_kw=20.0)
    pv = limit("site-a", T0, at(14), "evt-export", export_max_kw=1.0)
    loads = (NodeLoad("site-a", T0, at(14), 14.0),)
    plan = flat_schedule([6.0] * 8, [-3.0] * 8)
    firm, _ = firm_caps(small((feeder, pv), loads), plan)
    np.testing.assert_allclose(firm.power_kw["A-01"], [6.0] * 8)  # 14 + 6 = 20: at the cap
    np.testing.assert_allclose(firm.power_kw["A-02"], [-3.0] * 8)  # 3 - 14 < 1 kW export
    sunny = (NodeLoad("site-a", T0, at(14), -4.0),)  # PV: 4 kW already leave the site
    firm, _ = firm_caps(small((feeder, pv), sunny), plan)
    np.testing.assert_allclose(firm.power_kw["A-02"], [0.0] * 8)  # no room left to give back
    two = flat_schedule([8.0] * 8, [4.0] * 8)
    firm, _ = firm_caps(small((limit("site-a", T0, at(14), "cap", import_max_kw=6.0),)), two)
    np.testing.assert_allclose(firm.power_kw["A-01"], [4.0] * 8)  # both cut by half
    np.testing.assert_allclose(firm.power_kw["A-02"], [2.0] * 8)


# --- evse_limit_violations ----------------------------------------------------------------------
# s-001 is on A-01 (non-V2G, 11 kW): 13:10-18:45, max_charge_kw 7.4, so its first full
# interval is 13:15 and 13:00 is outside its window.  s-011 is on A-11 (V2G, 10 kW export):
# 13:15-18:00, max_discharge_kw 10.

def messages_about(found: list[str], subject: str) -> list[str]:
    return [m for m in found if m.startswith(f"{subject}:")]


def test_power_outside_the_plugged_in_window_is_found(shipped_solved: Solved) -> None:
    doctored = with_cell(shipped_solved.schedule, at(13), "A-01", "s-001", 3.0)
    found = evse_limit_violations(shipped_solved.scenario, doctored)
    assert len(found) == 1
    assert found[0].startswith("s-001:") and "outside the plugged-in window" in found[0]


def test_power_in_the_last_plugged_in_interval_is_allowed(shipped_solved: Solved) -> None:
    # 18:30-18:45 ends exactly at the departure of s-001
    doctored = with_cell(shipped_solved.schedule, at(18, 30), "A-01", "s-001", 3.0)
    assert evse_limit_violations(shipped_solved.scenario, doctored) == []
    doctored = with_cell(shipped_solved.schedule, at(18, 45), "A-01", "s-001", 3.0)
    assert len(evse_limit_violations(shipped_solved.scenario, doctored)) == 1


def test_charging_above_the_rating_is_found(shipped_solved: Solved) -> None:
    doctored = with_cell(shipped_solved.schedule, at(14), "A-01", "s-001", 12.0)
    found = evse_limit_violations(shipped_solved.scenario, doctored)
    assert len(found) == 2
    (evse_msg,) = messages_about(found, "A-01")
    assert "above" in evse_msg and "11.0 kW rating" in evse_msg
    (session_msg,) = messages_about(found, "s-001")
    assert "charges above 7.4 kW" in session_msg


def test_discharge_on_a_non_v2g_evse_is_found(shipped_solved: Solved) -> None:
    doctored = with_cell(shipped_solved.schedule, at(14), "A-01", "s-001", -3.0)
    found = evse_limit_violations(shipped_solved.scenario, doctored)
    assert len(found) == 2
    (evse_msg,) = messages_about(found, "A-01")
    assert "discharges beyond 0.0 kW" in evse_msg
    (session_msg,) = messages_about(found, "s-001")
    assert "discharges above 0.0 kW" in session_msg


def test_v2g_discharge_within_the_rating_is_fine_and_beyond_it_is_found(
        shipped_solved: Solved) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    assert evse_limit_violations(scenario, with_cell(schedule, at(14), "A-11", "s-011",
                                                     -10.0)) == []
    found = evse_limit_violations(scenario, with_cell(schedule, at(14), "A-11", "s-011",
                                                      -10.5))
    assert len(found) == 2
    assert "discharges beyond 10.0 kW" in messages_about(found, "A-11")[0]
    assert "discharges above 10.0 kW" in messages_about(found, "s-011")[0]
