"""Operator outputs: the per-session table, the summary, and the atomic file writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import aggregator.report as report
from aggregator.model import (
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    NodeKind,
    NodeLoad,
    OcppVersion,
    Schedule,
    Session,
)
from aggregator.report import format_summary, schedule_table, summarise, write_outputs
from aggregator.scenario import Scenario

from .conftest import Solved

OUTPUT_FILES = {"schedule.csv", "schedule.parquet", "summary.json", "node_load.png"}
TABLE_COLUMNS = ["interval_start", "evse_id", "session_id", "power_kw", "soc"]


def plugged_in_intervals(scenario: Scenario, session: Session) -> list[pd.Timestamp]:
    """Interval starts whose whole interval lies inside the session, found by brute force."""
    found = []
    for t in range(scenario.n_intervals):
        start = scenario.start + t * scenario.interval
        if start >= session.arrival and start + scenario.interval <= session.departure:
            found.append(pd.Timestamp(start))
    return found


def requested_kwh(session: Session) -> float:
    """The energy wish of a session straight from its fields."""
    if session.energy_requested_kwh is not None:
        return session.energy_requested_kwh
    assert session.target_soc is not None
    return max(0.0, session.battery_capacity_kwh * (session.target_soc - session.soc_initial))


# --- schedule_table -----------------------------------------------------------------------------

def test_schedule_table_has_one_row_per_plugged_in_session_interval(
        shipped_solved: Solved) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    table = schedule_table(scenario, schedule)
    assert list(table.columns) == TABLE_COLUMNS
    expected = {(t, s.session_id) for s in scenario.sessions
                for t in plugged_in_intervals(scenario, s)}
    assert len(table) == len(expected)
    assert set(zip(table["interval_start"], table["session_id"], strict=True)) == expected
    assert str(table["interval_start"].dt.tz) == "UTC"


def test_schedule_table_values_come_from_the_schedule(shipped_solved: Solved) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    table = schedule_table(scenario, schedule)
    evse_of = {s.session_id: s.evse_id for s in scenario.sessions}
    assert (table["evse_id"] == table["session_id"].map(evse_of)).all()
    rows = schedule.intervals.get_indexer(pd.DatetimeIndex(table["interval_start"]))
    cols = schedule.session_power_kw.columns.get_indexer(pd.Index(table["session_id"]))
    assert (rows >= 0).all() and (cols >= 0).all()
    power = schedule.session_power_kw.to_numpy()[rows, cols]
    soc = schedule.soc[schedule.session_power_kw.columns].to_numpy()[rows, cols]
    np.testing.assert_allclose(table["power_kw"], power)
    np.testing.assert_allclose(table["soc"], soc)
    assert table["soc"].between(0.0, 1.0).all()
    # sorted by time, then EVSE
    keys = list(zip(table["interval_start"], table["evse_id"], strict=True))
    assert keys == sorted(keys)


# --- summarise ----------------------------------------------------------------------------------

def test_summary_energy_matches_sums_over_the_schedule(shipped_solved: Solved) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    summary = summarise(scenario, schedule)
    step_h = 0.25
    power = schedule.session_power_kw.to_numpy()
    charged = float(np.clip(power, 0, None).sum() * step_h)
    discharged = float(np.clip(-power, 0, None).sum() * step_h)
    requested = sum(requested_kwh(s) for s in scenario.sessions)
    added = sum(float(schedule.soc[s.session_id].dropna().iloc[-1]) * s.battery_capacity_kwh
                - s.energy_initial_kwh for s in scenario.sessions)
    assert summary["sessions"] == len(scenario.sessions) == 32
    assert summary["energy_charged_kwh"] == pytest.approx(charged, abs=1e-3)
    assert summary["energy_delivered_kwh"] == pytest.approx(added, abs=1e-3)
    # nothing unmet: what went into the batteries is what was asked for
    assert summary["energy_delivered_kwh"] >= requested - summary["unmet_kwh"] - 1e-3
    assert summary["energy_discharged_kwh"] == pytest.approx(discharged, abs=1e-3)
    assert summary["energy_requested_kwh"] == pytest.approx(requested, abs=1e-3)
    assert summary["unmet_kwh"] == pytest.approx(float(schedule.unmet_kwh.sum()), abs=1e-3)
    # the optimizer's own accounting of the same energy agrees
    terms = schedule.solver_stats["cost_terms"]
    assert summary["energy_charged_kwh"] == pytest.approx(terms["charged_kwh"], abs=1e-3)
    assert summary["energy_discharged_kwh"] == pytest.approx(terms["discharged_kwh"], abs=1e-3)
    assert summary["cap_violations"] == 0
    assert summary["evse_limit_violations"] == 0
    assert summary["scenario"] == "office-evening-cap"
    assert "cost_terms" not in summary["solver"]
    json.dumps(summary)  # plain JSON-ready values


T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)


def tiny() -> tuple[Scenario, Schedule]:
    """One V2G session over four intervals with a hand-picked profile."""
    tree = GridTree((GridNode("feeder", NodeKind.FEEDER),
                     GridNode("site-a", NodeKind.SITE, parent_id="feeder")),
                    (Evse("A-01", "site-a", max_import_kw=11.0, max_export_kw=10.0,
                          v2g_capable=True, ocpp_version=OcppVersion.V21),))
    session = Session("s-1", "A-01", T0, T0 + 4 * STEP, battery_capacity_kwh=60.0,
                      soc_initial=0.3, max_charge_kw=11.0, max_discharge_kw=10.0,
                      energy_requested_kwh=10.0)
    cap = GridConstraint(node_id="site-a", start=T0, end=T0 + STEP, source="openadr",
                         source_ref="evt-tiny", received_at=T0, import_max_kw=5.0)
    load = NodeLoad("site-a", T0, T0 + 2 * STEP, 2.0)
    scenario = Scenario(name="tiny", start=T0, interval=STEP, n_intervals=4, tree=tree,
                        sessions=(session,), constraints=(cap,), loads=(load,))
    index = pd.date_range(T0, periods=4, freq=STEP, tz="UTC")
    kw = [4.0, 4.0, -2.0, 0.0]
    soc = [0.3 + 0.95 / 60, 0.3 + 2 * 0.95 / 60, 0.3 + 2 * 0.95 / 60 - 0.5 / 0.95 / 60, 0.32]
    schedule = Schedule(
        power_kw=pd.DataFrame({"A-01": kw}, index=index),
        session_power_kw=pd.DataFrame({"s-1": kw}, index=index),
        soc=pd.DataFrame({"s-1": soc}, index=index),
        unmet_kwh=pd.Series({"s-1": 1.25}), interval=STEP, objective=3.5, status="optimal",
        solver_stats={"method": "hand", "cost_terms": {"import_cost": 1.5,
                                                       "export_revenue": 0.2}})
    return scenario, schedule


def test_summary_of_a_hand_made_schedule() -> None:
    scenario, schedule = tiny()
    summary = summarise(scenario, schedule)
    assert summary["energy_charged_kwh"] == pytest.approx(2.0)  # (4 + 4) kW x 0.25 h
    # into the battery: the last SoC 0.32 of 60 kWh, less the 0.3 it arrived with
    assert summary["energy_delivered_kwh"] == pytest.approx(0.32 * 60 - 0.3 * 60)
    assert summary["energy_discharged_kwh"] == pytest.approx(0.5)  # 2 kW x 0.25 h
    assert summary["energy_requested_kwh"] == pytest.approx(10.0)
    assert summary["unmet_kwh"] == pytest.approx(1.25)
    assert summary["cap_violations"] == 1  # 4 kW + 2 kW base > 5 kW at 12:00
    assert summary["evse_limit_violations"] == 0
    assert (summary["import_cost"], summary["export_revenue"]) == (1.5, 0.2)
    assert summary["solver"] == {"method": "hand"}
    # site-a and the feeder see 4+2, 4+2, -2+0, 0+0 kW (base load 2 kW until 12:30)
    peaks = {p["node_id"]: (p["peak_import_kw"], p["peak_export_kw"])
             for p in summary["node_peaks"]}
    assert peaks == {"feeder": (6.0, 2.0), "site-a": (6.0, 2.0)}
    assert summary["status"] == "optimal" and summary["objective"] == 3.5


def test_format_summary_shows_the_key_figures() -> None:
    scenario, schedule = tiny()
    text = format_summary(summarise(scenario, schedule))
    assert "tiny" in text
    assert "2.0 kWh" in text  # delivered
    assert any(line.startswith("cap violations") and line.endswith("1")
               for line in text.splitlines())
    assert "site-a" in text and "feeder" in text


# --- write_outputs --------------------------------------------------------------------------------

def test_write_outputs_writes_the_four_files(shipped_solved: Solved, tmp_path: Path) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    out = tmp_path / "run" / "out"
    summary = write_outputs(scenario, schedule, out)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert set(summary["files"]) == OUTPUT_FILES
    assert all(Path(summary["files"][name]) == out / name for name in OUTPUT_FILES)
    # nothing else is left next to the output folder (no staging directory)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["out"]
    assert (out / "node_load.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk["cap_violations"] == 0

    table = schedule_table(scenario, schedule)
    csv = pd.read_csv(out / "schedule.csv")
    assert list(csv.columns) == TABLE_COLUMNS
    assert len(csv) == len(table)
    assert csv["interval_start"].str.endswith("Z").all()
    parsed = pd.to_datetime(csv["interval_start"], utc=True)
    assert (parsed.to_numpy() == table["interval_start"].to_numpy()).all()
    np.testing.assert_allclose(csv["power_kw"], table["power_kw"])


def test_parquet_round_trips_to_the_same_table(shipped_solved: Solved, tmp_path: Path) -> None:
    scenario, schedule = shipped_solved.scenario, shipped_solved.schedule
    write_outputs(scenario, schedule, tmp_path / "out")
    back = pd.read_parquet(tmp_path / "out" / "schedule.parquet")
    table = schedule_table(scenario, schedule)
    pd.testing.assert_frame_equal(back, table, check_exact=True)


def test_failed_plot_leaves_nothing_behind(shipped_solved: Solved, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_plot(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_node_load", broken_plot)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_outputs(shipped_solved.scenario, shipped_solved.schedule, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder or partial file either


def test_failed_plot_keeps_an_existing_output_folder_as_it_was(
        shipped_solved: Solved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"old": true}')

    def broken_plot(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_node_load", broken_plot)
    with pytest.raises(RuntimeError):
        write_outputs(shipped_solved.scenario, shipped_solved.schedule, out)
    assert [p.name for p in out.iterdir()] == ["summary.json"]
    assert (out / "summary.json").read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_large_trees_plot_the_feeder_and_the_tightest_sites(tmp_path: Path) -> None:
    from aggregator.fleet import generate_fleet
    from aggregator.planning import build_problem, to_schedule
    from aggregator.report import MAX_PLOTTED_NODES, plot_node_load, plotted_nodes
    from optimizer import solve

    scenario = generate_fleet(1000, seed=2)  # a feeder and 13 sites
    problem, index = build_problem(scenario)
    schedule = to_schedule(solve(problem), problem, index)
    nodes = plotted_nodes(scenario, schedule)
    assert len(nodes) == MAX_PLOTTED_NODES and nodes[0].node_id == "feeder"
    site_caps = {c.node_id: c.import_max_kw for c in scenario.constraints
                 if c.node_id.startswith("site")}
    from aggregator.audit import node_base_load_kw

    room = {n.node_id: site_caps[n.node_id]  # type: ignore[operator]
            - float((schedule.node_load_kw(scenario.tree, n.node_id) + node_base_load_kw(
                scenario, n.node_id, schedule.intervals)).max())
            for n in scenario.tree.nodes if n.node_id.startswith("site")}
    chosen = [n.node_id for n in nodes[1:]]
    assert max(room[s] for s in chosen) <= min(room[s] for s in room if s not in chosen)
    plot_node_load(scenario, schedule, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
