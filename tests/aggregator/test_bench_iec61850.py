"""``gridflex bench iec61850``: one JSON line per mode, against real IEDs (few samples).

No timing is asserted: only that every line has its keys and consistent values.
"""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pytest

import aggregator.bench_iec61850 as bench
from aggregator.bench_iec61850 import bench_iec61850
from tests.peers.availability import missing_peer

KEYS = {"bench", "mode", "server", "samples", "requested_samples", "timeouts",
        "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_min_s", "latency_max_s",
        "latency_mean_s", "baseline", "baseline_samples", "baseline_p50_s", "baseline_p99_s",
        "ratio_to_baseline", "ratio_to_baseline_p99", "poll_interval_s",
        "integrity_period_s", "request_timeout_s", "time_stamp_checked", "reports", "polls",
        "sequence_gaps", "connects", "rejected", "faults"}


def lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of the output (the table after them is not JSON)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def check_row(row: dict[str, Any], mode: str, samples: int) -> None:
    assert set(row) >= KEYS, sorted(KEYS - set(row))
    assert row["bench"] == "iec61850" and row["mode"] == mode
    assert row["samples"] == row["requested_samples"] == samples and row["timeouts"] == 0
    assert 0 < row["latency_min_s"] <= row["latency_p50_s"] <= row["latency_p90_s"] <= \
        row["latency_p99_s"] <= row["latency_max_s"]
    assert row["latency_min_s"] <= row["latency_mean_s"] <= row["latency_max_s"]
    assert 0 < row["baseline_p50_s"] <= row["baseline_p99_s"]
    assert row["baseline_samples"] >= samples
    assert row["ratio_to_baseline"] == pytest.approx(
        row["latency_p50_s"] / row["baseline_p50_s"], rel=0.01, abs=0.01)
    assert row["ratio_to_baseline_p99"] == pytest.approx(
        row["latency_p99_s"] / row["baseline_p99_s"], rel=0.01, abs=0.01)
    assert row["sequence_gaps"] == 0 and row["rejected"] == 0 and row["connects"] == 1
    assert all(math.isfinite(row[k]) for k in ("latency_p50_s", "latency_p99_s"))


def test_report_and_poll_modes(capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("pyiec61850") is None:
        missing_peer("pyiec61850-ng (libiec61850 peer) is not installed")
    status = bench_iec61850(["report", "poll"], 3, True, poll_interval_s=0.2,
                            integrity_period_s=2.0)
    out = capsys.readouterr().out
    assert status == 0, out
    report, poll = lines(out)
    assert len(out.strip().splitlines()) == 2  # --json: nothing but the lines
    check_row(report, "report", 3)
    assert report["server"] == "libiec61850" and report["time_stamp_checked"] is True
    assert report["integrity_period_s"] == 2.0 and report["poll_interval_s"] is None
    assert report["reports"] >= 3 and report["polls"] == 0
    check_row(poll, "poll", 3)
    assert poll["server"] == "libiec61850"
    assert poll["poll_interval_s"] == 0.2 and poll["integrity_period_s"] is None
    assert poll["reports"] == 0 and poll["polls"] >= 3


def test_without_the_libiec_peer_report_mode_names_the_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "libiec_missing", lambda: "pyiec61850-ng is not installed")
    status = bench_iec61850(["report", "poll"], 2, False, poll_interval_s=0.2)
    out = capsys.readouterr().out
    assert status != 0
    report, poll = lines(out)
    assert report["mode"] == "report" and report["missing_package"] == "pyiec61850-ng"
    assert "pyiec61850-ng" in report["error"]
    # polling runs on the demo substation (iec61850 package, no timestamp to check)
    check_row(poll, "poll", 2)
    assert poll["server"] == "iec61850" and poll["time_stamp_checked"] is False
    assert "error: report mode needs the libiec61850 IED" in out  # the table


def test_unknown_mode_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_iec61850(["push"], 1, True) == 2
    (row,) = lines(capsys.readouterr().out)
    assert row["mode"] == "push" and "unknown mode" in row["error"]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="samples"):
        bench_iec61850(["poll"], 0, True)
    with pytest.raises(ValueError, match="poll_interval_s"):
        bench_iec61850(["poll"], 1, True, poll_interval_s=0.0)
