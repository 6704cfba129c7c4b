"""Execute a notebook with papermill as CI does and read the ``results.json`` it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import papermill

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str, out_dir: Path, **parameters: Any) -> dict[str, Any]:
    """Run ``notebooks/{name}.ipynb`` top to bottom in a fresh kernel with ``parameters``
    (``out_dir`` added); a failing cell fails the test with the cell's traceback."""
    out_dir.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out_dir / f"{name}.out.ipynb"),
        parameters={**parameters, "out_dir": str(out_dir)}, kernel_name="python3",
        cwd=str(NOTEBOOKS), progress_bar=False)
    results: dict[str, Any] = json.loads((out_dir / "results.json").read_text())
    return results
