"""Replay: a scenario through the live controller, book and DSO translation code on a
simulated clock; KPIs measured from what the simulated stations did."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from adapters.openadr.config import VenConfig
from aggregator.constraints import SafeDefault
from aggregator.dso_feeds import DsoFeeds, IecSchedule, iec_schedule
from aggregator.model import Evse, GridNode, GridTree, NodeKind, OcppVersion, Session
from aggregator.replay import (
    DsoItem,
    Fault,
    ReplayScenario,
    ReplaySettings,
    replay,
    with_strategy,
)
from aggregator.scenario import Scenario
from aggregator.scenario_file import load_scenario

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
PROGRAM = "oadr://dso/evening"


def small(n: int = 4, *, hours: int = 6) -> Scenario:
    """One site of ``n`` 11 kW EVSEs (the last one V2G on 2.1, one on 1.6), one EV each."""
    evses = tuple(Evse(f"e{i}", "site", max_import_kw=11.0,
                       max_export_kw=11.0 if i == n else 0.0, v2g_capable=i == n,
                       ocpp_version=OcppVersion.V21 if i == n else
                       OcppVersion.V16 if i == 1 else OcppVersion.V201)
                  for i in range(1, n + 1))
    tree = GridTree(nodes=(GridNode("feeder", NodeKind.FEEDER),
                           GridNode("site", NodeKind.SITE, "feeder")), evses=evses)
    sessions = tuple(Session(f"s{i}", f"e{i}", T0 + timedelta(minutes=10 * i),
                             T0 + timedelta(hours=hours - 1), battery_capacity_kwh=60.0,
                             soc_initial=0.5 if i == n else 0.3, max_charge_kw=11.0,
                             energy_requested_kwh=15.0,
                             max_discharge_kw=11.0 if i == n else 0.0, min_soc_v2g=0.4)
                     for i in range(1, n + 1))
    return Scenario("small", T0, timedelta(minutes=15), hours * 4, tree, sessions)


def openadr_event(event_id: str, start: datetime, hours: float, level: float) -> dict[str, object]:
    """An OpenADR 2.0b SIMPLE event as openleadr hands it to the VEN."""
    length = timedelta(hours=hours)
    return {"event_descriptor": {"event_id": event_id, "modification_number": 0,
                                 "market_context": PROGRAM, "event_status": "far",
                                 "priority": 0, "test_event": False},
            "active_period": {"dtstart": start, "duration": length},
            "event_signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                               "signal_id": "s0", "intervals": [
                                   {"dtstart": start, "duration": length,
                                    "signal_payload": level, "uid": 0}]}],
            "targets": [{"ven_id": "ven-1"}]}


def ven_config() -> VenConfig:
    return VenConfig.from_mapping({
        "vtn_url": "http://127.0.0.1:9/OpenADR2/Simple/2.0b", "ven_name": "replay",
        "state_file": "unused.json", "default_nodes": ["site"],
        "programs": {PROGRAM: {"mandatory": True, "simple_levels_kw": {"1": 22, "2": 11}}}})


def test_uncontrolled_charging_breaks_the_evening_cap_and_the_lp_keeps_it() -> None:
    office = load_scenario(REPO / "scenarios" / "office-evening-cap.yaml")
    run = ReplayScenario(office, ReplaySettings(strategy="lp"))
    planned = replay(run)
    free = replay(with_strategy(run, "uncontrolled"))
    assert free.kpis["cap_violations"] > 0
    assert planned.kpis["cap_violations"] == 0
    assert planned.kpis["fallback_plans"] == 0
    assert planned.kpis["energy_delivered_pct"] >= 95.0
    assert planned.kpis["peak_kw[feeder-1]"] < free.kpis["peak_kw[feeder-1]"]
    assert planned.kpis["discharged_kwh"] > 0  # the V2G cars help through the peak
    # energy is conserved between the tables
    assert planned.kpis["imported_kwh"] == pytest.approx(
        planned.sessions["imported_kwh"].sum(), abs=1e-3)
    nodes = planned.nodes
    assert isinstance(pd.DatetimeIndex(nodes["at"]).tz, type(UTC)) or str(
        pd.DatetimeIndex(nodes["at"]).tz) == "UTC"


def test_a_replay_is_deterministic() -> None:
    run = ReplayScenario(small(), ReplaySettings(strategy="lp"))
    first, second = replay(run), replay(run)
    ignore = {"solve_p50_s", "solve_max_s"}
    assert {k: v for k, v in first.kpis.items() if k not in ignore} == {
        k: v for k, v in second.kpis.items() if k not in ignore}
    pd.testing.assert_frame_equal(first.evses, second.evses)


def test_an_openadr_event_goes_through_the_ven_and_caps_the_site() -> None:
    start = T0 + timedelta(hours=1)
    feeds = DsoFeeds(openadr=ven_config())
    run = ReplayScenario(small(), ReplaySettings(strategy="lp"), feeds=feeds,
                         dso=(DsoItem(T0 + timedelta(minutes=20), "openadr",
                                      openadr_event("ev1", start, 2, 2.0)),))
    result = replay(run)
    site = result.nodes[result.nodes["node"] == "site"].set_index("at")
    during = site[(site.index >= start) & (site.index < start + timedelta(hours=2))]
    assert (during["import_cap_kw"] == 11.0).all()
    assert (during["load_kw"] <= 11.0 + 1e-6).all()
    assert result.kpis["cap_violations"] == 0
    assert result.kpis["dr_delivered_kwh"] > 0


def test_a_lost_link_falls_back_to_the_safe_default_after_the_last_limit_expires() -> None:
    start = T0 + timedelta(hours=1)
    feeds = DsoFeeds(openadr=ven_config())
    run = ReplayScenario(
        small(), ReplaySettings(strategy="lp"), feeds=feeds,
        dso=(DsoItem(T0, "openadr", openadr_event("ev1", start, 1, 1.0)),),
        faults=(Fault("link_loss", "openadr", T0 + timedelta(minutes=30),
                      T0 + timedelta(hours=5)),),
        safe_defaults=(SafeDefault("openadr", "site", import_max_kw=15.0),))
    result = replay(run)
    site = result.nodes[result.nodes["node"] == "site"].set_index("at")
    assert site.loc[start + timedelta(minutes=30), "import_cap_kw"] == 22.0  # the event
    assert site.loc[start + timedelta(hours=2), "import_cap_kw"] == 15.0  # then the default
    assert result.kpis["cap_violations"] == 0


def test_an_iec61850_schedule_is_resolved_by_the_adapter_rules() -> None:
    from adapters.iec61850.config import IedConfig

    start = T0 + timedelta(hours=1)
    ied = IedConfig("sub1", "replay", 102, "GWEVSE1", "site")
    low = iec_schedule("FSCH01", priority=10, start=start, interval_s=3600,
                       values_w=[20_000, 8_000])
    high = iec_schedule("FSCH02", priority=20, start=start + timedelta(minutes=30),
                        interval_s=1800, values_w=[5_000])
    feeds = DsoFeeds(ieds={"sub1": ied})
    run = ReplayScenario(small(), ReplaySettings(strategy="lp"), feeds=feeds, dso=(
        DsoItem(T0, "iec61850", IecSchedule(T0, "sub1", low)),
        DsoItem(T0 + timedelta(minutes=15), "iec61850", IecSchedule(T0, "sub1", high))))
    result = replay(run)
    cap = result.nodes[result.nodes["node"] == "site"].set_index("at")["import_cap_kw"]
    assert cap[start] == 20.0
    assert cap[start + timedelta(minutes=30)] == 5.0  # the higher SchdPrio wins
    assert cap[start + timedelta(hours=1, minutes=30)] == 8.0
    assert result.kpis["cap_violations"] == 0


def test_station_faults_act_where_they_would_live() -> None:
    scenario = small()
    window = (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    run = ReplayScenario(scenario, ReplaySettings(strategy="lp"), faults=(
        Fault("station_offline", "e2", *window), Fault("reject_profiles", "e3", *window),
        Fault("meter_gap", "e1", *window)))
    result = replay(run)
    evses = result.evses.set_index(["evse", "at"])
    offline = evses.loc["e2"]["power_kw"]
    inside = offline[(offline.index >= window[0]) & (offline.index < window[1])]
    # uncontrolled: full power from the first step until the EV has what it wanted
    assert (inside.iloc[:3] == 11.0).all()
    charging = inside[inside > 0]
    assert (charging.iloc[:-1] == 11.0).all()
    # a station refusing profiles is planned as uncontrolled load from then on
    assert "e3" in result.kpis["uncontrolled_evses"].split(",")
    assert result.kpis["cap_violations"] == 0


def test_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="step"):
        replay(ReplayScenario(small(), replace(ReplaySettings(), step=timedelta(minutes=7))))
