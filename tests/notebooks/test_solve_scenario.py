"""The solve_scenario notebook runs top to bottom with injected parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[2]


def run_notebook(path: Path, **parameters: Any) -> dict[str, Any]:
    """Execute the code cells in order, replacing the `parameters` cell (papermill-style)."""
    notebook = json.loads(path.read_text())
    namespace: dict[str, Any] = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}:{cell['id']}", "exec"), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update(parameters)
    return namespace


def test_notebook_plans_the_shipped_scenario_within_its_caps() -> None:
    result = run_notebook(ROOT / "notebooks" / "solve_scenario.ipynb",
                          scenario_path=str(ROOT / "scenarios" / "office-evening-cap.yaml"))
    summary = result["summary"]
    assert summary["status"] == "optimal"
    assert summary["cap_violations"] == 0
    peaks = result["peak_by_node"]
    assert peaks["feeder-1"] <= 250.0 + 1e-6  # the feeder's static rating in the file


def test_notebook_runs_the_milp() -> None:
    result = run_notebook(ROOT / "notebooks" / "solve_scenario.ipynb",
                          scenario_path=str(ROOT / "scenarios" / "office-evening-cap.yaml"),
                          method="milp")
    assert result["summary"]["cap_violations"] == 0
    assert result["solution"].stats["method"] == "fix"
