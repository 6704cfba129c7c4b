"""``gridflex`` run in-process through ``aggregator.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from aggregator.cli import main
from aggregator.scenario import Scenario

from .conftest import SHIPPED_SCENARIO

OUTPUT_FILES = {"schedule.csv", "schedule.parquet", "summary.json", "node_load.png"}

# A small scenario whose session has soc 1.4 (must be <= 1) on a line found below.
BAD_SCENARIO = """\
name: broken
start: 2026-11-20T12:00:00Z
intervals: 8
nodes:
  - {id: site-a, kind: site, import_max_kw: 50}
evses:
  - {id: A-01, node: site-a, max_import_kw: 11}
sessions:
  - id: s-1
    evse: A-01
    arrival: 2026-11-20T12:00:00Z
    departure: 2026-11-20T13:00:00Z
    battery_kwh: 60
    soc: 1.4
    energy_kwh: 5
    max_charge_kw: 11
"""
BAD_LINE = BAD_SCENARIO.splitlines().index("    soc: 1.4") + 1


def test_solve_writes_the_files_and_reports_no_cap_violations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["solve", str(SHIPPED_SCENARIO), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cap_violations"] == 0
    assert summary["status"] == "optimal"
    printed = capsys.readouterr().out
    assert "office-evening-cap" in printed and "cap violations" in printed


def test_solve_json_prints_one_json_object(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["solve", str(SHIPPED_SCENARIO), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert isinstance(summary, dict)
    assert summary["scenario"] == "office-evening-cap"
    assert summary["cap_violations"] == 0
    assert summary == json.loads((out / "summary.json").read_text())


def test_bad_scenario_returns_2_names_file_line_and_path_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario_file = tmp_path / "broken.yaml"
    scenario_file.write_text(BAD_SCENARIO)
    out = tmp_path / "out"
    assert main(["solve", str(scenario_file), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{scenario_file}:{BAD_LINE}: sessions[0].soc:" in captured.err
    assert BAD_LINE == 14
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.yaml"]


def test_model_error_found_while_planning_returns_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # valid as a file, but a setpoint on an EVSE is refused by the planner
    text = BAD_SCENARIO.replace("soc: 1.4", "soc: 0.4") + """\
constraints:
  - {node: A-01, start: 2026-11-20T12:00:00Z, end: 2026-11-20T13:00:00Z, setpoint_kw: 3,
     ref: evse-setpoint}
"""
    scenario_file = tmp_path / "setpoint.yaml"
    scenario_file.write_text(text)
    out = tmp_path / "out"
    assert main(["solve", str(scenario_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(scenario_file) in err and "setpoint_kw" in err
    assert not out.exists()


def test_missing_scenario_file_returns_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["solve", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_offline_demo_solves_the_shipped_scenario(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--offline", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert json.loads((out / "summary.json").read_text())["scenario"] == "office-evening-cap"
    assert "office-evening-cap" in capsys.readouterr().out


def evse_power(out: Path) -> pd.DataFrame:
    """kW per (interval, EVSE) from the written per-session table."""
    table = pd.read_parquet(out / "schedule.parquet")
    per_evse = table.groupby(["interval_start", "evse_id"])["power_kw"].sum().unstack()
    return per_evse.fillna(0.0)  # EVSEs without a session in an interval are idle


def below_minimum(power: pd.DataFrame, scenario: Scenario) -> int:
    """Cells with a non-zero power under the EVSE's minimum (6 A x 3 x 230 V = 4.14 kW)."""
    count = 0
    for evse in scenario.tree.evses:
        if evse.evse_id not in power:
            continue
        magnitude = power[evse.evse_id].abs()
        count += int(((magnitude > 1e-6) & (magnitude < evse.min_power_kw - 1e-6)).sum())
    return count


def test_solve_milp_respects_the_minimum_power(tmp_path: Path, shipped_scenario: Scenario,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert [e.min_power_kw for e in shipped_scenario.tree.evses] == pytest.approx([4.14] * 20)
    milp_out = tmp_path / "milp"
    assert main(["solve", str(SHIPPED_SCENARIO), "--out", str(milp_out), "--milp",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cap_violations"] == 0
    assert summary["unmet_kwh"] == pytest.approx(0.0, abs=1e-3)
    milp_power = evse_power(milp_out)
    assert below_minimum(milp_power, shipped_scenario) == 0
    assert (milp_power.abs() > 1e-6).to_numpy().any()  # it does charge


def test_replay_prints_the_kpis_and_writes_the_tables(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(SHIPPED_SCENARIO), "--out", str(tmp_path), "--json"]) == 0
    kpis = json.loads(capsys.readouterr().out)
    assert kpis["strategy"] == "lp" and kpis["cap_violations"] == 0
    assert kpis["energy_delivered_pct"] > 90
    stored = pd.read_parquet(tmp_path / "kpis.parquet").iloc[0]
    assert stored["energy_delivered_kwh"] == kpis["energy_delivered_kwh"]
    assert len(pd.read_parquet(tmp_path / "sessions.parquet")) == kpis["sessions"]


def test_replay_uncontrolled_breaks_caps_and_says_so_by_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(SHIPPED_SCENARIO), "--strategy", "uncontrolled", "--out",
                 str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["cap_violations"] > 0


def test_replay_refuses_a_step_that_does_not_divide_the_interval(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(SHIPPED_SCENARIO), "--step-minutes", "7", "--out",
                 str(tmp_path)]) == 2
    assert "step" in capsys.readouterr().err


def test_replay_reads_the_files_replay_section_and_the_options_override_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "office.yaml"
    scenario.write_text(SHIPPED_SCENARIO.read_text()
                        + "\nreplay: {strategy: uncontrolled, step_minutes: 15}\n")
    assert main(["replay", str(scenario), "--out", str(tmp_path / "a"), "--json"]) == 1
    kpis = json.loads(capsys.readouterr().out)
    assert kpis["strategy"] == "uncontrolled" and kpis["cap_violations"] > 0
    assert main(["replay", str(scenario), "--strategy", "edf", "--out", str(tmp_path / "b"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategy"] == "edf"
    scenario.write_text(SHIPPED_SCENARIO.read_text() + "\nreplay: {strategy: greedy}\n")
    assert main(["replay", str(scenario), "--out", str(tmp_path / "c")]) == 2
    assert "replay.strategy: unknown value 'greedy'" in capsys.readouterr().err


def test_bench_quality_prints_one_json_line_per_algorithm(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "quality", "--sessions", "12", "--seed", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    algorithms = {row["algorithm"] for row in rows if "algorithm" in row and "check" not in row}
    assert {"acn-uncontrolled", "acn-edf", "acn-llf", "acn-round_robin", "acn-adaptive",
            "gridflex-lp", "gridflex-milp"} <= algorithms
    lp = next(row for row in rows if row.get("algorithm") == "gridflex-lp")
    assert {"energy_delivered_pct", "cost", "peak_kw", "cost_ratio_to_baseline"} <= set(lp)
    check = next(row for row in rows if row.get("check") == "lp_vs_best_acn")
    assert check["ok"] is True


def test_sweep_replays_every_combination_and_names_a_bad_parameter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(SHIPPED_SCENARIO), "--param", "replay.strategy=edf,lp",
                 "--param", "replay.step_minutes=15", "--serial", "--json",
                 "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["strategy"] for row in rows] == ["edf", "lp"]
    assert all(row["cap_violations"] == 0 for row in rows)
    assert len(pd.read_parquet(tmp_path / "sweep.parquet")) == 2
    assert main(["sweep", str(SHIPPED_SCENARIO), "--param", "replay.strategy=edf,greedy",
                 "--serial", "--out", str(tmp_path)]) == 2
    assert "replay.strategy" in capsys.readouterr().err
