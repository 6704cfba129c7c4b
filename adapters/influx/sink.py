"""Plans and meter readings as time-series points, written in the background.

influxdb-client's batching writer sends from its own thread, so control never waits on
the database; a failing database costs telemetry points (counted and logged), never a
plan and never ledger data (the ledger is separate).  Names and ids go in tags (some
InfluxDB-compatible stores keep string fields as 0); values are fields with units in
their names.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import WriteOptions

from aggregator.model import MeterSample, Schedule

log = logging.getLogger("gridflex.influx")


def _moments(series: pd.Series) -> list[datetime]:
    return [stamp.to_pydatetime() for stamp in pd.DatetimeIndex(series.index)]


def schedule_points(schedule: Schedule, node_load_kw: Mapping[str, pd.Series],
                    caps_kw: Mapping[str, pd.Series] | None = None,
                    events: Mapping[str, str] | None = None) -> list[Point]:
    """Planned power per EVSE, state of charge per session, load per node with its cap.

    ``events`` maps a node to the reference of the DSO event in force, added as a tag.
    """
    points: list[Point] = []
    for evse_id, series in schedule.power_kw.items():
        for moment, value in zip(_moments(series), series.to_numpy(), strict=True):
            points.append(Point("evse_plan").tag("evse", str(evse_id))
                          .field("power_kw", float(value)).time(moment, WritePrecision.S))
    for session_id, series in schedule.soc.items():
        present = series.dropna()
        for moment, value in zip(_moments(present), present.to_numpy(), strict=True):
            points.append(Point("session_soc").tag("session", str(session_id))
                          .field("soc", float(value)).time(moment, WritePrecision.S))
    for node_id, series in node_load_kw.items():
        cap = (caps_kw or {}).get(node_id)
        caps = cap.reindex(series.index).to_numpy() if cap is not None else None
        for i, (moment, value) in enumerate(zip(_moments(series), series.to_numpy(),
                                                strict=True)):
            point = Point("node_power").tag("node", node_id).field("load_kw", float(value))
            if caps is not None and pd.notna(caps[i]):
                point = point.field("cap_import_kw", float(caps[i]))
            if events and node_id in events:
                point = point.tag("event", events[node_id])
            points.append(point.time(moment, WritePrecision.S))
    return points


def sample_points(samples: Iterable[MeterSample]) -> list[Point]:
    """Meter readings as points (value in Wh, W or percent by measurand)."""
    return [Point("meter").tag("station", s.station_id).tag("evse", s.evse_id or
                                                             str(s.evse_number))
            .tag("measurand", s.measurand.value).tag("transaction", s.transaction_id or "")
            .field(f"value_{s.measurand.unit.lower()}", s.value)
            .time(s.measured_at, WritePrecision.S) for s in samples]


class TelemetrySink:
    """Batched, background writes of points to one bucket; usable as a ``MeterSink``."""

    def __init__(self, url: str, *, token: str = "", org: str = "gridflex",
                 bucket: str = "gridflex", batch_size: int = 5000,
                 flush_interval_ms: int = 1000, max_retries: int = 2) -> None:
        self.bucket, self.org = bucket, org
        self.failed_batches = 0
        self._lock = threading.Lock()
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=5000)
        self._writer = self._client.write_api(
            write_options=WriteOptions(batch_size=batch_size,
                                       flush_interval=flush_interval_ms,
                                       max_retries=max_retries, max_retry_delay=2000),
            error_callback=self._failed)

    def _failed(self, conf: Any, data: Any, error: Exception) -> None:
        with self._lock:
            self.failed_batches += 1
        log.warning("telemetry batch dropped after retries: %s", error)

    def write(self, points: Sequence[Point]) -> None:
        """Queue points for the background writer; returns at once."""
        self._writer.write(bucket=self.bucket, org=self.org, record=list(points))

    async def put(self, samples: Sequence[MeterSample]) -> None:
        self.write(sample_points(samples))

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        self._writer.close()
        self._client.close()
