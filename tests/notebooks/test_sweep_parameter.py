"""The sweep_parameter notebook fans a parameter sweep out on Dask and plots the KPIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks.papermill_run import execute

ROOT = Path(__file__).resolve().parents[2]
OFFICE = str(ROOT / "scenarios" / "office-evening-cap.yaml")

pytestmark = pytest.mark.slow  # a kernel and a Dask LocalCluster


def test_the_unmet_penalty_sweep_shows_the_lp_trading_energy_for_cost(tmp_path: Path) -> None:
    result = execute("sweep_parameter", tmp_path, scenario_path=OFFICE,
                     param="settings.unmet_penalty_per_kwh", values=[0.1, 10.0],
                     strategies=["edf", "lp"], extra={"replay.step_minutes": [15]})
    rows = {(row["settings.unmet_penalty_per_kwh"], row["replay.strategy"]): row
            for row in result["rows"]}
    assert set(rows) == {(0.1, "edf"), (0.1, "lp"), (10.0, "edf"), (10.0, "lp")}
    # a penalty below the energy price: the LP rationally leaves energy unmet; EDF ignores it
    assert rows[0.1, "lp"]["energy_delivered_pct"] < rows[10.0, "lp"]["energy_delivered_pct"]
    assert rows[0.1, "edf"]["energy_delivered_pct"] == rows[10.0, "edf"]["energy_delivered_pct"]
    assert rows[10.0, "lp"]["energy_delivered_pct"] >= 95.0
    assert all(row["cap_violations"] == 0 for row in rows.values())
    assert result["figures"] == ["sweep.png"]
    assert "solve_p50_s" not in result["rows"][0]  # comparable(): timings dropped
