"""The compare_strategies notebook sets strategies side by side on one scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks.papermill_run import execute

ROOT = Path(__file__).resolve().parents[2]
OFFICE = str(ROOT / "scenarios" / "office-evening-cap.yaml")

pytestmark = pytest.mark.slow  # a kernel per notebook run


def test_the_comparison_ranks_control_above_none(tmp_path: Path) -> None:
    result = execute("compare_strategies", tmp_path, scenario_path=OFFICE,
                     strategies=["uncontrolled", "edf", "llf", "lp", "milp"], step_minutes=15)
    table = {row["strategy"]: row for row in result["table"]}
    assert list(table) == ["uncontrolled", "edf", "llf", "lp", "milp"]
    assert table["uncontrolled"]["cap_violations"] > 0
    for name in ("edf", "llf", "lp", "milp"):
        assert table[name]["cap_violations"] == 0
    assert table["lp"]["cost"] < min(table[name]["cost"] for name in ("edf", "llf"))
    assert table["lp"]["discharged_kwh"] > 0 == table["edf"]["discharged_kwh"]
    assert result["tightest"] == "feeder-1"  # the DSO's 90 kW evening cap
    assert result["figures"] == ["kpis.png", "tightest_node.png"]
