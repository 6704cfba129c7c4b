"""Telemetry to an InfluxDB-compatible time-series database (influxdb-client, v2 API)."""
