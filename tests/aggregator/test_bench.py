"""``gridflex bench optimizer``: JSON lines per path and the pyomo/direct comparison.

Each case runs in a spawned process (a fresh interpreter importing numpy, pandas and
pyomo); the pyomo comparison takes a few seconds and is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aggregator.bench import bench_optimizer
from aggregator.cli import main

RESULT_KEYS = {"sessions", "path", "build_s", "solve_s", "total_s", "peak_rss_mb", "objective",
               "status"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on anything else)."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(row, dict) for row in rows)
    return rows


@pytest.mark.slow
def test_bench_direct_vs_pyomo_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_optimizer([60], ["direct", "pyomo"], pyomo_limit_s=60, seed=3,
                             json_only=True)
    assert status == 0
    rows = json_lines(capsys.readouterr().out)
    results = {row["path"]: row for row in rows if "path" in row}
    assert set(results) == {"direct", "pyomo"}
    for path, row in results.items():
        assert set(row) >= RESULT_KEYS, path
        assert row["sessions"] == 60
        assert row["status"] == "optimal"
        assert row["build_s"] >= 0 and row["solve_s"] >= 0 and row["total_s"] > 0
        assert row["peak_rss_mb"] > 0
    (comparison,) = [row for row in rows if "compare" in row]
    assert comparison["compare"] == "pyomo/direct"
    assert comparison["sessions"] == 60
    assert {"build_ratio_pyomo_over_direct", "total_ratio_pyomo_over_direct",
            "objective_rel_diff"} <= set(comparison)
    # both paths solve the same LP, so the objectives agree
    assert comparison["objective_rel_diff"] <= 1e-6
    direct, pyomo = results["direct"]["objective"], results["pyomo"]["objective"]
    assert abs(pyomo - direct) / max(1.0, abs(direct)) == pytest.approx(
        comparison["objective_rel_diff"])
    assert len(rows) == 3


def test_cli_bench_json_prints_json_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "optimizer", "--sessions", "40", "--paths", "direct", "--json"]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert len(rows) == 1
    (row,) = rows
    assert set(row) >= RESULT_KEYS
    assert (row["sessions"], row["path"], row["status"]) == (40, "direct", "optimal")


@pytest.mark.parametrize("argv", [
    ["bench", "optimizer", "--sessions", "ten"],
    ["bench", "optimizer", "--sessions", "0"],
    ["bench", "optimizer", "--paths", "direct,fast"],
])
def test_cli_bench_rejects_bad_arguments(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "--sessions" in capsys.readouterr().err


def test_bench_ledger_prints_one_line_per_backend(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from aggregator.bench import bench_ledger, ledger_readings

    url = f"sqlite:///{tmp_path / 'bench.db'}"
    expected = sum(len(batch) for batch in ledger_readings(3, 1, 100))
    assert bench_ledger({"sqlite": url}, n_evses=3, days=1, batch=100) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["backend"], first["samples"], first["sessions_settled"]) == (
        "sqlite", expected, 6)  # three EVSEs, two sessions each
    assert first["ingest_samples_per_s"] > 0 and first["settle_s"] >= 0
    assert "settle_month_1000_evse_s" not in first  # only at the full size
    # the same-run baseline: the raw-window query on the first day, against the buckets
    assert first["settle_raw_s"] > 0 and first["settle_day_s"] >= 0
    assert first["raw_over_buckets_first_day"] > 0
    assert first["first_day_matches_raw"] is True and "raw-window" in first["baseline"]
    bench_ledger({"sqlite": url}, n_evses=3, days=1, batch=100)  # the same readings again
    again = json.loads(capsys.readouterr().out)
    assert again["samples"] == 0 and again["settled_kwh"] == first["settled_kwh"]


def test_gridflex_bench_ledger_on_postgresql_alone(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.aggregator.conftest import postgres_ledger

    for ledger in postgres_ledger():
        url = ledger.engine.url.render_as_string(hide_password=False)
        ledger.engine.dispose()
        assert main(["bench", "ledger", "--skip-sqlite", "--postgres", url, "--evses", "2",
                     "--days", "1", "--batch", "100"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["backend"] == "postgresql" and row["samples"] > 0
    assert row["first_day_matches_raw"] is True
    with pytest.raises(SystemExit):
        main(["bench", "ledger", "--skip-sqlite"])
