"""gridflex's CSMS against a second, independent and strict peer: npm ``ocpp-rpc`` 2.2.1.

``tests/peers/ocpp_rpc/station.js`` is an ``RPCClient`` charge point in ``strictMode``: every
message in either direction is validated against the OCA JSON schemas (ajv), formats included,
so a payload the python ``ocpp`` library lets through (it checks required fields and types, not
formats: a date-time that is not RFC 3339 gets sent) is rejected here.  OCPP 2.1 is strict
too: ocpp-rpc's bundled 2.1 schemas are re-keyed at startup (see station.js).  Each test runs
the CSMS on a free loopback port and the station as a node subprocess that reports every
event as one JSON line on stdout.

Node.js and npm are needed; ``node_modules`` is installed from the lockfile on first use
(``npm ci --prefix tests/peers/ocpp_rpc``).  Without node or npm the tests skip, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adapters.ocpp.csms import Csms, MemorySink, StationConfig
from adapters.ocpp.profiles import ProfileRequest, set_charging_profile
from aggregator.model import Evse, Measurand, MeterSample, OcppVersion
from tests.adapters.ocpp.test_csms import run as run_csms

PEER = Path(__file__).resolve().parents[2] / "peers" / "ocpp_rpc"
STATION_JS = PEER / "station.js"
OCPP_RPC_VERSION = "2.2.1"
MIN_NODE_MAJOR = 18

STATIONS = (StationConfig("RPC16", "pw-16", {1: "B-16"}),
            StationConfig("RPC201", "pw-201", {1: "B-201"}),
            StationConfig("RPC21", "pw-21", {1: "B-21"}))
VERSIONS = [pytest.param("RPC16", "ocpp1.6", "pw-16", id="ocpp1.6"),
            pytest.param("RPC201", "ocpp2.0.1", "pw-201", id="ocpp2.0.1"),
            pytest.param("RPC21", "ocpp2.1", "pw-21", id="ocpp2.1")]
EVSES = {"RPC16": Evse("B-16", "site-b", 11.0, ocpp_version=OcppVersion.V16),
         "RPC201": Evse("B-201", "site-b", 11.0, ocpp_version=OcppVersion.V201),
         "RPC21": Evse("B-21", "site-b", 11.0, max_export_kw=10.0, v2g_capable=True,
                       ocpp_version=OcppVersion.V21)}
START = datetime(2026, 11, 20, 16, tzinfo=UTC)


# -- the peer's installation --------------------------------------------------------------
@dataclass
class PeerInstall:
    """node with ocpp-rpc installed, or why not; ``node`` fails or skips the calling test."""

    node_path: str | None = None
    missing_tool: str | None = None  # node or npm absent: skip locally, fail under CI
    broken: str | None = None  # present but unusable (npm ci failed, ...): always fail

    @property
    def node(self) -> str:
        if self.broken is not None:
            pytest.fail(self.broken, pytrace=False)
        if self.missing_tool is not None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{self.missing_tool} (CI=true: the ocpp-rpc peer is required, "
                            "never skipped)", pytrace=False)
            pytest.skip(self.missing_tool)
        assert self.node_path is not None
        return self.node_path


def _installed_version() -> str | None:
    manifest = PEER / "node_modules" / "ocpp-rpc" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def ocpp_rpc() -> PeerInstall:
    """Find node and npm; install ocpp-rpc from the lockfile once if it is not there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        absent = " and ".join(name for name, path in (("node", node), ("npm", npm))
                              if path is None)
        return PeerInstall(missing_tool=f"the ocpp-rpc peer needs Node.js >= {MIN_NODE_MAJOR} "
                                        f"and npm; not on PATH: {absent}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_NODE_MAJOR:
        return PeerInstall(missing_tool=f"the ocpp-rpc peer needs Node.js >= {MIN_NODE_MAJOR}, "
                                        f"found {version or 'an unknown version'} at {node}")
    if _installed_version() != OCPP_RPC_VERSION:
        command = [npm, "ci", "--prefix", str(PEER), "--no-audit", "--no-fund"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return PeerInstall(broken=f"{' '.join(command)} took more than 300 s")
        if result.returncode != 0 or _installed_version() != OCPP_RPC_VERSION:
            return PeerInstall(broken=f"{' '.join(command)} failed (exit {result.returncode}):\n"
                                      f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return PeerInstall(node_path=node)


# -- a running station.js -----------------------------------------------------------------
@dataclass
class Station:
    """station.js as a subprocess: its stdout events, one JSON object a line."""

    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "error", "kind": "not-json", "line": line}
            self.events.append(event)
            self._queue.put_nowait(event)
        self._queue.put_nowait({"event": "eof"})

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode().rstrip())

    def diagnostics(self) -> str:
        warnings = [line for line in self.stderr if not line.startswith("strict mode:")]
        return (f"events: {json.dumps(self.events, indent=1)[-6000:]}\n"
                f"stderr: {chr(10).join(warnings)[-3000:]}")

    async def expect(self, name: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next event called ``name``; an error, exit or timeout on the way fails."""
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self._queue.get()
                if event["event"] == name:
                    return event
                if event["event"] in ("error", "exit", "eof", "timeout", "closed"):
                    raise AssertionError(f"station.js: wanted {name!r}, got {event}\n"
                                         f"{self.diagnostics()}")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())

    async def wait(self, timeout_s: float = 10.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        await asyncio.gather(*self._tasks)
        return code

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "error"]


@contextlib.asynccontextmanager
async def station_js(node: str, url: str, station_id: str, password: str,
                     subprotocol: str) -> AsyncIterator[Station]:
    process = await asyncio.create_subprocess_exec(
        node, str(STATION_JS), url, station_id, password, subprotocol, "20",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=PEER)
    peer = Station(process)
    peer._tasks = [asyncio.create_task(peer._read_stdout()),
                   asyncio.create_task(peer._read_stderr())]
    try:
        yield peer
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for task in peer._tasks:
            task.cancel()
        await asyncio.gather(*peer._tasks, return_exceptions=True)


@dataclass
class CountingSink(MemorySink):
    """A memory sink that also keeps every delivery, so a duplicate would show."""

    delivered: list[MeterSample] = field(default_factory=list)

    async def put(self, samples: Sequence[MeterSample]) -> None:
        self.delivered.extend(samples)
        await super().put(samples)


def run(body: Callable[[Csms, str], Awaitable[None]]) -> Csms:
    """The CSMS test harness (security profile 1) with this file's stations and sink."""
    return run_csms(body, sink=CountingSink(), stations=STATIONS, security_profile=1)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


def plan(station_id: str, powers_kw: list[float], *, profile_id: int, stack_level: int,
         transaction_id: str | None = None) -> dict[str, Any]:
    evse = EVSES[station_id]
    series = pd.Series(powers_kw, index=pd.date_range(START, periods=len(powers_kw),
                                                     freq="15min", tz="UTC"))
    return set_charging_profile(ProfileRequest(
        evse=evse, power_kw=series, interval=timedelta(minutes=15), profile_id=profile_id,
        stack_level=stack_level,
        purpose="TxProfile" if transaction_id is not None else "TxDefaultProfile",
        transaction_id=transaction_id))


def schedule_of(payload: dict[str, Any]) -> dict[str, Any]:
    if "csChargingProfiles" in payload:
        return dict(payload["csChargingProfiles"]["chargingSchedule"])
    return dict(payload["chargingProfile"]["chargingSchedule"][0])


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- tests --------------------------------------------------------------------------------
def test_the_peer_is_strict_in_every_version(ocpp_rpc: PeerInstall) -> None:
    # guards the other tests: a peer whose validators let everything through proves nothing
    result = subprocess.run([ocpp_rpc.node, str(STATION_JS), "--self-test"],
                            capture_output=True, text=True, timeout=30, cwd=PEER)
    report = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0 and report["ok"], report
    for protocol in ("ocpp1.6", "ocpp2.0.1", "ocpp2.1"):
        verdicts = report["results"][protocol]
        assert verdicts["good"] == "valid"
        assert "required property 'stackLevel'" in verdicts["bad"][0]
        assert 'must match format "date-time"' in verdicts["bad"][1]


@pytest.mark.parametrize(("station_id", "subprotocol", "password"), VERSIONS)
def test_strict_station_boots_meters_and_takes_profiles(ocpp_rpc: PeerInstall, station_id: str,
                                                        subprotocol: str, password: str) -> None:
    node = ocpp_rpc.node
    v2g = EVSES[station_id].can_discharge
    # the default profile discharges in OCPP 2.1 (V2G), charges only elsewhere
    default = plan(station_id, [7.4, 11.0, -5.0 if v2g else 3.0, 0.0], profile_id=3,
                   stack_level=1)
    meter: list[dict[str, Any]] = []
    transaction: list[str] = []

    async def body(csms: Csms, url: str) -> None:
        async with station_js(node, url, station_id, password, subprotocol) as peer:
            assert (await peer.expect("connected"))["protocol"] == subprotocol
            assert (await peer.expect("boot"))["status"] == "Accepted"
            assert (await peer.expect("authorized"))["status"] == "Accepted"
            if subprotocol != "ocpp1.6":
                assert (await peer.expect("needs"))["status"] == "Accepted"
                needs = csms.ev_needs[(station_id, 1)]
                assert needs.energy_kwh == 20.0
                assert needs.departure == datetime(2026, 11, 20, 18, tzinfo=UTC)
            ready = await peer.expect("ready")
            tx = ready["transactionId"]
            transaction.append(tx)
            assert csms.transactions[(station_id, 1)] == tx

            # a TxDefaultProfile, then a TxProfile for the running transaction
            assert await csms.set_charging_profile(station_id, default) == "Accepted"
            assert (await peer.expect("profile"))["payload"] == default
            tx_profile = plan(station_id, [11.0, 4.2], profile_id=4, stack_level=2,
                              transaction_id=tx)
            assert await csms.set_charging_profile(station_id, tx_profile) == "Accepted"
            assert (await peer.expect("profile"))["payload"] == tx_profile

            # read-back: the station's composite schedule is the last profile's periods
            composite = await csms.get_composite_schedule(station_id, 1, 3600)
            seen = await peer.expect("composite")
            assert seen["request"]["duration"] == 3600
            assert composite is not None and composite["status"] == "Accepted"
            periods = schedule_of(tx_profile)["chargingSchedulePeriod"]
            if subprotocol == "ocpp1.6":
                got = composite["charging_schedule"]
                assert composite["connector_id"] == 1
            else:
                got = composite["schedule"]
                assert got["evse_id"] == 1
            assert got["charging_rate_unit"] == "A"
            # (the ocpp library hands 1.6 numbers over as Decimal, 2.x ones as float)
            assert [(p["start_period"], float(p["limit"]))
                    for p in got["charging_schedule_period"]] \
                == [(p["startPeriod"], p["limit"]) for p in periods]

            assert await csms.clear_charging_profile(station_id, 4) == "Accepted"
            assert (await peer.expect("clear"))["remaining"] == 1
            assert await csms.clear_charging_profile(station_id, 99) == "Unknown"

            peer.send("end")
            ended = await peer.expect("ended")
            meter.extend(ended["meter"])
            await until(lambda: len(csms.sink.samples) == len(meter),  # type: ignore[attr-defined]
                        f"{len(meter)} samples in the sink")
            assert (station_id, 1) not in csms.transactions
            peer.send("done")
            assert await peer.wait() == 0, peer.diagnostics()
            assert peer.errors() == []

    csms = run(body)
    assert not csms.rejected_values
    assert isinstance(csms.sink, CountingSink)
    samples = csms.sink.delivered  # every delivery, not de-duplicated by the sink itself
    assert len(samples) == len(meter)  # exactly once each, retransmissions included
    assert len({s.key for s in samples}) == len(samples)  # (Voltage is not settled on)
    for sent in meter:
        measurand = Measurand(sent["measurand"])
        # the reading in gridflex's unit for it: Wh, W or percent
        value = float(next(sent[unit] for unit in ("wh", "w", "percent") if unit in sent))
        matches = [s for s in samples if s.measurand is measurand
                   and s.measured_at == _moment(sent["timestamp"])
                   and s.context == sent["context"]]
        assert [s.value for s in matches] == [value], sent
    assert {s.transaction_id for s in samples} == set(transaction)
    assert {(s.station_id, s.evse_number, s.evse_id) for s in samples} == {
        (station_id, 1, EVSES[station_id].evse_id)}
    exported = sorted(s.value for s in samples if s.measurand is Measurand.ENERGY_EXPORT)
    assert exported == ([750.0, 2000.0] if subprotocol == "ocpp2.1" else [])


def test_v2g_discharge_profile_reaches_a_strict_21_station(ocpp_rpc: PeerInstall) -> None:
    node = ocpp_rpc.node
    payload = plan("RPC21", [-7.4, -10.0, 0.0, 11.0], profile_id=7, stack_level=0)

    async def body(csms: Csms, url: str) -> None:
        async with station_js(node, url, "RPC21", "pw-21", "ocpp2.1") as peer:
            await peer.expect("ready")
            assert await csms.set_charging_profile("RPC21", payload) == "Accepted"
            arrived = (await peer.expect("profile"))["payload"]
            assert arrived == payload
            periods = arrived["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
            discharging = [p for p in periods if p.get("operationMode") == "CentralSetpoint"]
            # 7.4 kW and 10 kW on 3 x 230 V, rounded towards less discharge
            assert [(p["setpoint"], p["dischargeLimit"]) for p in discharging] == [
                (-10.7, -10.7), (-14.4, -14.4)]
            assert all(p["limit"] == 0 for p in discharging)
            assert [p.get("operationMode") for p in periods] == [
                "CentralSetpoint", "CentralSetpoint", "ChargingOnly", "ChargingOnly"]
            composite = await csms.get_composite_schedule("RPC21", 1, 3600)
            assert composite is not None
            first = composite["schedule"]["charging_schedule_period"][0]
            assert first["operation_mode"] == "CentralSetpoint" and first["setpoint"] == -10.7
            peer.send("done")
            assert await peer.wait() == 0, peer.diagnostics()
            assert peer.errors() == []

    run(body)


@pytest.mark.parametrize(("station_id", "subprotocol", "password"), VERSIONS)
def test_strict_station_rejects_a_profile_with_a_bad_date_time(ocpp_rpc: PeerInstall,
                                                               station_id: str, subprotocol: str,
                                                               password: str) -> None:
    # on the wire, in every version: the python ocpp library does not check formats and sends
    # this; the strict peer refuses it, and the CSMS does not take the refusal for acceptance
    node = ocpp_rpc.node
    payload = plan(station_id, [7.4], profile_id=5, stack_level=0)
    profile = payload.get("csChargingProfiles") or payload["chargingProfile"]
    profile["validFrom"] = "2026-11-20 16:00"  # no seconds, no offset: not RFC 3339

    async def body(csms: Csms, url: str) -> None:
        async with station_js(node, url, station_id, password, subprotocol) as peer:
            await peer.expect("ready")
            status = await csms.set_charging_profile(station_id, payload)
            # the station's CallError reaches the caller with its reason (OCPP 1.6 spells
            # the code FormationViolation)
            assert status.startswith(("FormatViolationError", "FormationViolationError"))
            assert 'validFrom must match format "date-time"' in status
            with pytest.raises(AssertionError, match='validFrom must match format "date-time"'):
                await peer.expect("profile")
            assert await peer.wait() == 2
            (error,) = peer.errors()
            assert error["kind"] == "strict" and error["direction"] == "csms->station call"
            assert error["method"] == "SetChargingProfile"
            assert error["rpcErrorCode"] == "FormatViolation"

    run(body)


def test_strict_station_with_a_wrong_password_is_refused(ocpp_rpc: PeerInstall) -> None:
    node = ocpp_rpc.node

    async def body(csms: Csms, url: str) -> None:
        async with station_js(node, url, "RPC201", "not-the-password", "ocpp2.0.1") as peer:
            assert await peer.wait() == 2
            (error,) = peer.errors()
            assert error["kind"] == "connect" and error["message"] == "Unauthorized"
            assert csms.connected == {}

    run(body)
