"""The replay_scenario notebook replays a scenario and plots loads, SoC and settlement."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks.papermill_run import execute

ROOT = Path(__file__).resolve().parents[2]
OFFICE = str(ROOT / "scenarios" / "office-evening-cap.yaml")

pytestmark = pytest.mark.slow  # a kernel per notebook run


def test_the_replay_notebook_keeps_the_caps_and_settles_what_the_plant_did(
        tmp_path: Path) -> None:
    result = execute("replay_scenario", tmp_path, scenario_path=OFFICE, strategy="lp",
                     step_minutes=15)
    kpis = result["kpis"]
    assert kpis["strategy"] == "lp" and kpis["cap_violations"] == 0
    assert result["worst_over_cap_kw"] <= 0.01
    assert kpis["energy_delivered_pct"] >= 95.0
    assert result["discharged_kwh"] == pytest.approx(kpis["discharged_kwh"], abs=1e-3)
    assert result["settlement_gap_kwh"] <= 0.001 * 2  # register resolution (Wh), per session
    assert result["figures"] == ["node_load.png", "settlement.png", "soc_discharge.png"]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in result["figures"])


def test_the_replay_notebook_shows_uncontrolled_charging_over_the_cap(tmp_path: Path) -> None:
    result = execute("replay_scenario", tmp_path, scenario_path=OFFICE,
                     strategy="uncontrolled", step_minutes=15)
    assert result["kpis"]["cap_violations"] > 0
    assert result["worst_over_cap_kw"] > 0
