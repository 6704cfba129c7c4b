"""The solve_scenario notebook runs top to bottom (papermill) with injected parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks.papermill_run import execute

ROOT = Path(__file__).resolve().parents[2]
OFFICE = str(ROOT / "scenarios" / "office-evening-cap.yaml")

pytestmark = pytest.mark.slow  # a kernel per notebook run


def test_notebook_plans_the_shipped_scenario_within_its_caps(tmp_path: Path) -> None:
    result = execute("solve_scenario", tmp_path, scenario_path=OFFICE)
    summary = result["summary"]
    assert summary["status"] == "optimal"
    assert summary["cap_violations"] == 0
    assert result["peak_by_node"]["feeder-1"] <= 250.0 + 1e-6  # the feeder's static rating


def test_notebook_runs_the_milp(tmp_path: Path) -> None:
    result = execute("solve_scenario", tmp_path, scenario_path=OFFICE, method="milp")
    assert result["summary"]["cap_violations"] == 0
    assert result["method"] == "fix"
    assert (tmp_path / "node_load_soc.png").stat().st_size > 0
