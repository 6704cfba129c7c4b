"""Telemetry written with influxdb-client to a real VictoriaMetrics on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from adapters.influx.sink import TelemetrySink, sample_points, schedule_points
from aggregator.model import Measurand, MeterSample, Schedule
from tests.peers.net import free_port

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)



@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A VictoriaMetrics server of its own (Debian package ``victoria-metrics``)."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("victoria-metrics is not installed (make test installs it)")
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    port = free_port()
    server = subprocess.Popen(
        [binary, f"-httpListenAddr=127.0.0.1:{port}",
         f"-storageDataPath={tmp_path_factory.mktemp('vm')}", "-retentionPeriod=100y"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("victoria-metrics did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def export(url: str, metric: str) -> list[dict[str, object]]:
    """Every stored series of ``metric`` (VictoriaMetrics names them measurement_field)."""
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=5).close()
    query = urllib.parse.urlencode({"match[]": metric})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=5) as reply:
        return [json.loads(line) for line in reply.read().decode().splitlines() if line]


def tiny_schedule() -> Schedule:
    index = pd.date_range(T0, periods=3, freq="15min", tz="UTC")
    power = pd.DataFrame({"A-01": [11.0, -5.0, 0.0]}, index=index)
    soc = pd.DataFrame({"s-1": [0.4, 0.38, None]}, index=index)
    return Schedule(power_kw=power, session_power_kw=power.rename(columns={"A-01": "s-1"}),
                    soc=soc, unmet_kwh=pd.Series({"s-1": 0.0}), interval=timedelta(minutes=15),
                    objective=0.0, status="optimal", solver_stats={})


def test_plans_and_readings_arrive_with_their_tags(victoria: str) -> None:
    schedule = tiny_schedule()
    load = {"site-a": pd.Series([50.0, 20.0, 30.0], index=schedule.intervals)}
    caps = {"site-a": pd.Series([60.0, 25.0, 60.0], index=schedule.intervals)}
    sink = TelemetrySink(victoria, batch_size=10, flush_interval_ms=100)
    sink.write(schedule_points(schedule, load, caps, events={"site-a": "evt-7/mod-2"}))
    reading = MeterSample(station_id="CS1", evse_number=1, transaction_id="t1",
                          measured_at=T0, measurand=Measurand.ENERGY_EXPORT, value=750.0,
                          received_at=T0, evse_id="A-01")
    sink.write(sample_points([reading]))
    sink.close()
    assert sink.failed_batches == 0
    (plan,) = export(victoria, "evse_plan_power_kw")
    assert plan["metric"]["evse"] == "A-01"  # type: ignore[index]
    assert plan["values"] == [11.0, -5.0, 0.0]  # discharge kept negative
    assert plan["timestamps"][0] == int(T0.timestamp() * 1000)  # type: ignore[index]
    (cap,) = export(victoria, "node_power_cap_import_kw")
    assert cap["metric"]["event"] == "evt-7/mod-2"  # type: ignore[index]
    assert cap["values"] == [60.0, 25.0, 60.0]
    (soc,) = export(victoria, "session_soc_soc")
    assert soc["values"] == [0.4, 0.38]  # no point where the EV is not there
    (meter,) = export(victoria, "meter_value_wh")
    assert meter["metric"]["measurand"] == "Energy.Active.Export.Register"  # type: ignore[index]
    assert meter["values"] == [750.0]


def test_an_unreachable_database_costs_points_not_control() -> None:
    sink = TelemetrySink(f"http://127.0.0.1:{free_port()}", batch_size=1,
                         flush_interval_ms=10, max_retries=0)
    sink.write(sample_points([MeterSample(
        station_id="CS1", evse_number=1, transaction_id=None, measured_at=T0,
        measurand=Measurand.SOC, value=55.0, received_at=T0)]))  # returns at once, no raise
    sink.close()  # flushes: the write fails in the background
    assert sink.failed_batches == 1
