"""The service end to end on 127.0.0.1: a real openleadr VTN as the DSO, simulated OCPP
stations (1.6, 2.0.1, 2.1 V2G) as the CPO side, the operator API over HTTP, and
``gridflex serve`` stopped by SIGTERM without losing an acknowledged meter sample."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.ocpp.simulator import SimEv, SimEvse, SimStation
from adapters.openadr.vtn import Interval, LoopbackVtn
from aggregator.ledger import Ledger
from aggregator.model import Measurand
from aggregator.plans import journaled_plans
from aggregator.service import Service
from aggregator.service_config import service_config_from_mapping
from tests.peers.net import free_port

REPO = Path(__file__).resolve().parents[2]
PROGRAM = "oadr://dso/evening"
STATIONS = (("cs-16", "1.6", False), ("cs-201", "2.0.1", False), ("cs-21", "2.1", True))


def config_table(tmp_path: Path, *, vtn_url: str | None = None, api_port: int = 0,
                 ocpp_port: int = 0) -> dict[str, Any]:
    table: dict[str, Any] = {
        "service": {"ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                    "api_port": api_port},
        "controller": {"debounce_s": 0.05, "period_s": 3600, "horizon_intervals": 16},
        "nodes": [{"id": "feeder", "kind": "feeder"},
                  {"id": "office", "kind": "site", "parent": "feeder"}],
        "ocpp": {"port": ocpp_port, "stations": [
            {"id": sid, "password": f"pw-{sid}", "version": version,
             "rate_unit": "W" if v2g else "A",
             "evses": [{"number": 1, "id": f"e-{sid}", "node": "office", "max_import_kw": 11,
                        "max_export_kw": 11 if v2g else 0, "v2g": v2g}]}
            for sid, version, v2g in STATIONS]},
    }
    if vtn_url is not None:
        table["openadr"] = {
            "vtn_url": vtn_url, "ven_name": "gridflex-service-test",
            "state_file": str(tmp_path / "ven.json"), "default_nodes": ["office"],
            "programs": {PROGRAM: {"mandatory": True, "simple_levels_kw": {"1": 20, "2": 10}}}}
    return table


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ev(hours: float = 2.5, *, v2g: bool = False) -> SimEv:
    """An EV that needs full power until it leaves (30 kWh in 2.5 h at 11 kW)."""
    return SimEv(battery_capacity_kwh=60.0, soc=0.5, departure=datetime.now(UTC) + timedelta(
        hours=hours), max_charge_kw=11.0, energy_requested_kwh=30.0,
        max_discharge_kw=11.0 if v2g else 0.0, min_soc=0.4 if v2g else 0.0)


async def connected_stations(service: Service) -> list[SimStation]:
    stations = []
    for sid, version, v2g in STATIONS:
        station = SimStation(sid, version, f"pw-{sid}",  # type: ignore[arg-type]
                             {1: SimEvse(11.0, 11.0 if v2g else 0.0)})
        await station.connect(f"ws://127.0.0.1:{service.ocpp_port}")
        stations.append(station)
    return stations


def site_kw(stations: list[SimStation]) -> float:
    return sum(s.state[1].applied_kw for s in stations)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_dso_event_to_profiles_and_the_operator_api(tmp_path: Path) -> None:
    async def body() -> None:
        vtn = LoopbackVtn(port=free_port())
        await vtn.start()
        service = Service(service_config_from_mapping(config_table(tmp_path, vtn_url=vtn.url)))
        await service.start()
        stations = await connected_stations(service)
        try:
            for station, (_, _, v2g) in zip(stations, STATIONS, strict=True):
                await station.plug_in(1, ev(v2g=v2g), "TAG-1")
            await until(lambda: any(p.sessions == 3 for p in service.controller.plans),
                        "a plan with the three sessions")
            await until(lambda: site_kw(stations) > 20.0, "the 2.x EVs charging at 11 kW")
            ven = service.adapters["openadr"]
            await until(lambda: ven.client.ven_id is not None, "registration")
            now = datetime.now(UTC)
            vtn.add_event(ven.client.ven_id, "peak-1", "SIMPLE", "level",
                          [Interval(now - timedelta(minutes=1), timedelta(hours=1), 2.0)],
                          market_context=PROGRAM)
            await until(lambda: service.book.limit_kw("office", "import",
                                                      datetime.now(UTC)) == 10.0,
                        "the event's cap in the book")
            await until(lambda: any(t.kind == "constraint" and "openadr" in t.detail
                                    for p in service.controller.plans for t in p.triggers),
                        "the plan the event triggered")
            assert site_kw(stations) <= 10.0 + 0.1  # the stations follow the new profiles
            latest = service.controller.plans[-1]
            assert any(t.kind == "constraint" and "openadr" in t.detail
                       for p in service.controller.plans for t in p.triggers), [
                (t.kind, t.detail) for p in service.controller.plans for t in p.triggers]
            assert all(a.status == "Accepted" for a in latest.answers), latest.answers
            for station in stations:
                await station.step()  # meter values into the ledger
            await until(lambda: service.meter.stored >= 9, "meter samples in the ledger")

            base = f"http://127.0.0.1:{service.api_port}"
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(f"{base}/health")).json()
                assert health["stations_connected"] == ["cs-16", "cs-201", "cs-21"]
                assert health["dso_links"]["openadr"]["up"] is True
                assert isinstance(health["planning"], bool)
                assert health["pending_triggers"] >= 0
                found = await (await http.get(f"{base}/constraints")).json()
                binding = [c for c in found["constraints"] if c["binding"]
                           and c["node_id"] == "office" and c["direction"] == "import"]
                assert [(c["limit_kw"], c["source"]) for c in binding] == [(10.0, "openadr")]
                assert "peak-1" in binding[0]["source_ref"]
                schedule = await (await http.get(f"{base}/schedule")).json()
                assert schedule["plan_id"] == service.controller.plans[-1].plan_id
                sessions = await (await http.get(f"{base}/sessions")).json()
                assert len(sessions["live"]) == 3
                plans = await (await http.get(f"{base}/plans?limit=5")).json()
                assert 1 <= len(plans["plans"]) <= 5
                bad = await http.get(f"{base}/constraints?at=yesterday")
                assert bad.status == 400 and "at:" in (await bad.json())["error"]
                spec = await (await http.get(f"{base}/openapi.json")).json()
                assert {"/health", "/constraints", "/schedule", "/settlement"} <= set(
                    spec["paths"])
                replan = await http.post(f"{base}/replan")
                assert replan.status == 202
                await until(lambda: any(t.kind == "operator" for t in
                                        service.controller.plans[-1].triggers), "the replan")
                settled = await (await http.get(f"{base}/settlement")).json()
                assert settled["sessions"] == 3
        finally:
            for station in stations:
                await station.close()
            await service.stop()
            await vtn.stop()
        assert len(journaled_plans(service.ledger)) == len(service.controller.plans)
        from aggregator.session_journal import sessions as journaled_sessions
        journaled = journaled_sessions(service.ledger, datetime(2000, 1, 1, tzinfo=UTC),
                                       datetime(2100, 1, 1, tzinfo=UTC))
        assert sorted(s.station_id for s in journaled) == ["cs-16", "cs-201", "cs-21"]
        assert all(s.started_at is not None for s in journaled)
        assert sum(s.needs is not None for s in journaled) >= 2  # 2.0.1 and 2.1 EVs said

    run(body)


def test_gridflex_serve_stops_on_sigterm_and_keeps_every_acknowledged_sample(
        tmp_path: Path) -> None:
    ocpp_port, api_port = free_port(), free_port()
    table = config_table(tmp_path, api_port=api_port, ocpp_port=ocpp_port)
    lines = [f'[service]\nledger_url = "{table["service"]["ledger_url"]}"\n'
             f"api_port = {api_port}\n",
             "[controller]\ndebounce_s = 0.05\nperiod_s = 3600\nhorizon_intervals = 16\n",
             '[[nodes]]\nid = "feeder"\nkind = "feeder"\n',
             '[[nodes]]\nid = "office"\nkind = "site"\nparent = "feeder"\n',
             f"[ocpp]\nport = {ocpp_port}\n"]
    for sid, version, v2g in STATIONS:
        lines.append(f'[[ocpp.stations]]\nid = "{sid}"\npassword = "pw-{sid}"\n'
                     f'version = "{version}"\nrate_unit = "{"W" if v2g else "A"}"\n'
                     f'[[ocpp.stations.evses]]\nnumber = 1\nid = "e-{sid}"\nnode = "office"\n'
                     f"max_import_kw = 11\nmax_export_kw = {11 if v2g else 0}\n"
                     f"v2g = {'true' if v2g else 'false'}\n")
    path = tmp_path / "gridflex.toml"
    path.write_text("\n".join(lines))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "aggregator.cli", "serve", "--config",
                                str(path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    sent = 0

    async def body() -> None:
        nonlocal sent
        deadline = time.monotonic() + 60
        while True:  # wait for the API to answer
            try:
                async with aiohttp.ClientSession() as http:
                    health = await (await http.get(f"http://127.0.0.1:{api_port}/health")).json()
                    if health["status"] == "ok":
                        break
            except aiohttp.ClientError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("gridflex serve did not come up") from None
                await asyncio.sleep(0.1)
        moments = [datetime.now(UTC)]
        station = SimStation("cs-201", "2.0.1", "pw-cs-201", {1: SimEvse(11.0)},
                             clock=lambda: moments[-1])
        await station.connect(f"ws://127.0.0.1:{ocpp_port}")
        await station.plug_in(1, ev(), "TAG-1")
        for _ in range(20):  # every call below is acknowledged before the next
            moments.append(moments[-1] + timedelta(minutes=1))
            await station.step()
        sent = 20
        while True:  # stop once the service has planned (under load that can lag the steps)
            async with aiohttp.ClientSession() as http:
                answer = await (await http.get(f"http://127.0.0.1:{api_port}/plans")).json()
            if answer["plans"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        await station.close()

    try:
        run(body)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "gridflex stopped" in output
    ledger = Ledger(table["service"]["ledger_url"])
    imports = [s for s in ledger.samples() if s.measurand is Measurand.ENERGY_IMPORT
               and s.station_id == "cs-201"]
    # the transaction's begin reading and one register reading per acknowledged step
    assert len({s.measured_at for s in imports}) >= sent
    assert len(journaled_plans(ledger)) >= 1


@pytest.mark.parametrize(("bad", "named"), [
    ("[service\n", "not valid TOML"),
    ('method = "auto"', "controller.method"),
    ("max_import_kw = 11", "ocpp.stations[0].evses[0].max_import_kw")])
def test_gridflex_serve_refuses_a_bad_configuration_naming_the_field(tmp_path: Path, bad: str,
                                                                      named: str) -> None:
    example = (REPO / "scenarios" / "service.example.toml").read_text()
    path = tmp_path / "bad.toml"
    path.write_text(bad if bad.startswith("[") else example.replace(
        bad, bad.split("=")[0] + '= "fast"', 1))
    result = subprocess.run([sys.executable, "-m", "aggregator.cli", "serve", "--config",
                             str(path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert named in result.stderr
