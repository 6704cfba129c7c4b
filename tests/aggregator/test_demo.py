"""The live demo end to end, as CI runs it: three DSO peers, 20 OCPP stations, the
service, an accelerated evening.  The numbers checked are measured at the stations and
settled from the ledger, not taken from the plan."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from aggregator.demo import DemoSettings, format_summary, run_demo


@pytest.mark.slow
def test_live_demo_keeps_every_cap_settles_v2g_and_reports(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = asyncio.run(run_demo(DemoSettings(out_dir=tmp_path, speed=450.0, hours=6.0),
                                   lines.append))
    assert summary["cap_violations"] == 0, summary["violations"]
    assert summary["stations"] == 20 and summary["sessions"] == 20
    assert summary["energy_delivered_kwh"] > 150.0
    # the evening-peak event and price were received and acted on, measured per event
    assert summary["event_latency_samples"] == 3
    assert 0.0 < summary["event_to_profiles_p99_s"] < 60.0
    assert summary["meter_samples"] > 1000 and summary["flagged_sessions"] == 0
    assert summary["ieee2030_5_mirror_posts"] >= 2  # the office's metering reached the DSO
    png = Path(summary["report_png"])
    assert png.stat().st_size > 10_000
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["cap_violations"] == 0
    assert any("OpenADR: evening-peak event" in line for line in lines)
    assert "cap violations" in format_summary(summary)
    # V2G cars discharged during the peak and the ledger settled it
    assert summary["discharged_kwh_settled"] > 0.0
