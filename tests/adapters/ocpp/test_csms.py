"""gridflex's CSMS against real ocpp-library charge points (1.6, 2.0.1, 2.1) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ocpp.exceptions import FormatViolationError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.v16 import call as c16
from ocpp.v21 import call as c21
from ocpp.v201 import call as c201
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from adapters.ocpp.csms import Csms, CsmsConfig, MemorySink, StationConfig
from adapters.ocpp.profiles import ProfileRequest, set_charging_profile
from aggregator.model import Evse, Measurand, MeterSample, OcppVersion
from tests.adapters.ocpp.conftest import make_pki, now, station

STATIONS = (StationConfig("CS16", "pw-16", {1: "A-09"}),
            StationConfig("CS201", "pw-201", {1: "A-01"}),
            StationConfig("CS21", "pw-21", {1: "A-11"}))
VERSIONS = [("CS16", "ocpp1.6", "pw-16"), ("CS201", "ocpp2.0.1", "pw-201"),
            ("CS21", "ocpp2.1", "pw-21")]
EVSES = {"CS16": Evse("A-09", "site-a", 11.0, ocpp_version=OcppVersion.V16),
         "CS201": Evse("A-01", "site-a", 11.0),
         "CS21": Evse("A-11", "site-a", 11.0, max_export_kw=10.0, v2g_capable=True,
                      ocpp_version=OcppVersion.V21)}


def run(body: Callable[[Csms, str], Awaitable[None]], *, sink: Any = None,
        **config: Any) -> Csms:
    """Start a CSMS on a free loopback port, run ``body(csms, url)``, stop it."""
    config.setdefault("stations", STATIONS)
    csms = Csms(CsmsConfig(**config), sink if sink is not None else MemorySink())

    async def main() -> None:
        port = await csms.start()
        scheme = "wss" if config.get("ssl_context") else "ws"
        try:
            await asyncio.wait_for(body(csms, f"{scheme}://127.0.0.1:{port}"), 30)
        finally:
            await asyncio.wait_for(csms.stop(), 10)

    asyncio.run(main())
    return csms


async def boot(cp: Any, subprotocol: str) -> Any:
    if subprotocol == "ocpp1.6":
        return await cp.call(c16.BootNotification(charge_point_model="M",
                                                  charge_point_vendor="V"))
    module = c21 if subprotocol == "ocpp2.1" else c201
    return await cp.call(module.BootNotification(
        charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


@pytest.mark.parametrize(("station_id", "subprotocol", "password"), VERSIONS)
def test_station_boots_takes_a_profile_and_reads_it_back(station_id: str, subprotocol: str,
                                                         password: str) -> None:
    evse = EVSES[station_id]
    planned = pd.Series([7.4, 11.0, -5.0 if evse.can_discharge else 0.0, 0.0],
                        index=pd.date_range(datetime(2026, 11, 20, 16, tzinfo=UTC), periods=4,
                                            freq="15min", tz="UTC"))
    payload = set_charging_profile(ProfileRequest(
        evse=evse, power_kw=planned, interval=timedelta(minutes=15), profile_id=3,
        stack_level=1, purpose="TxDefaultProfile"))

    async def body(csms: Csms, url: str) -> None:
        async with station(url, station_id, subprotocol, password=password) as cp:
            assert (await boot(cp, subprotocol)).status == "Accepted"
            await until(lambda: station_id in csms.connected)
            assert await csms.set_charging_profile(station_id, payload) == "Accepted"
            assert len(cp.profiles) == 1
            composite = await csms.get_composite_schedule(station_id, 1, 3600)
            assert composite is not None and composite["status"] == "Accepted"
            assert await csms.clear_charging_profile(station_id, 3) == "Accepted"
            assert cp.profiles == []

    run(body)


def test_wrong_password_unknown_station_and_foreign_protocol_are_refused() -> None:
    async def body(csms: Csms, url: str) -> None:
        with pytest.raises(InvalidStatus) as caught:
            async with station(url, "CS201", "ocpp2.0.1", password="wrong"):
                pass
        assert caught.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as caught:
            async with station(url, "CS201", "ocpp2.0.1"):  # no credentials at all
                pass
        assert caught.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as caught:
            async with station(url, "INTRUDER", "ocpp2.0.1", password="x"):
                pass
        assert caught.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as caught:  # garbage credentials: 401, not a crash
            async with connect(f"{url}/CS201", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                               additional_headers={"Authorization": "Basic %%%not-base64"}):
                pass
        assert caught.value.response.status_code == 401
        assert csms.connected == {}

    run(body)


def test_meter_values_16_become_samples_exactly_once_in_wh() -> None:
    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as cp:
            await boot(cp, "ocpp1.6")
            started = await cp.call(c16.StartTransaction(
                connector_id=1, id_tag="TAG", meter_start=1000, timestamp=now()))
            tx = started.transaction_id
            values = [{"timestamp": "2026-11-20T16:15:00Z", "sampledValue": [
                {"value": "1.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                {"value": "55", "measurand": "SoC", "unit": "Percent"},
                {"value": "230", "measurand": "Voltage", "unit": "V"}]}]
            for _ in range(2):  # the station repeats itself: still one sample each
                await cp.call(c16.MeterValues(connector_id=1, transaction_id=tx,
                                              meter_value=values))
            await cp.call(c16.StopTransaction(meter_stop=4200, timestamp=now(),
                                              transaction_id=tx))
            await until(lambda: len(csms.sink.samples) == 4)  # type: ignore[attr-defined]

    csms = run(body)
    samples: Sequence[MeterSample] = list(csms.sink.samples.values())  # type: ignore[attr-defined]
    energy = sorted(s.value for s in samples if s.measurand is Measurand.ENERGY_IMPORT)
    assert energy == [1000.0, 1500.0, 4200.0]  # meter start, 1.5 kWh, meter stop (Wh)
    assert [s.value for s in samples if s.measurand is Measurand.SOC] == [55.0]
    assert {s.evse_id for s in samples} == {"A-09"}
    assert len({s.transaction_id for s in samples}) == 1


@pytest.mark.parametrize(("station_id", "subprotocol", "password"), VERSIONS[1:])
def test_transaction_events_carry_import_and_export_registers(station_id: str,
                                                              subprotocol: str,
                                                              password: str) -> None:
    module = c21 if subprotocol == "ocpp2.1" else c201

    def event(kind: str, seq: int, register_wh: float, export_kwh: float) -> Any:
        return module.TransactionEvent(
            event_type=kind, timestamp=now(), trigger_reason="MeterValuePeriodic",
            seq_no=seq, transaction_info={"transaction_id": "tx-9"}, evse={"id": 1},
            meter_value=[{"timestamp": f"2026-11-20T16:{15 * seq:02d}:00Z", "sampled_value": [
                {"value": register_wh, "measurand": "Energy.Active.Import.Register"},
                {"value": export_kwh, "measurand": "Energy.Active.Export.Register",
                 "unit_of_measure": {"unit": "kWh"}}]}])

    async def body(csms: Csms, url: str) -> None:
        async with station(url, station_id, subprotocol, password=password) as cp:
            await boot(cp, subprotocol)
            await cp.call(event("Started", 0, 10_000, 0.0))
            await until(lambda: csms.transactions.get((station_id, 1)) == "tx-9")
            await cp.call(event("Updated", 1, 12_500, 0.75))
            await cp.call(event("Ended", 2, 12_500, 2.0))
            await until(lambda: len(csms.sink.samples) == 6)  # type: ignore[attr-defined]
            assert (station_id, 1) not in csms.transactions

    csms = run(body)
    samples = list(csms.sink.samples.values())  # type: ignore[attr-defined]
    exported = sorted(s.value for s in samples if s.measurand is Measurand.ENERGY_EXPORT)
    assert exported == [0.0, 750.0, 2000.0]  # kWh normalised to Wh, never netted
    assert all(s.transaction_id == "tx-9" for s in samples)


def test_a_failing_sink_delays_samples_but_loses_none() -> None:
    class FlakySink(MemorySink):
        failures = 3

        async def put(self, samples: Sequence[MeterSample]) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("ledger unavailable")
            await super().put(samples)

    sink = FlakySink()

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            for minute in range(5):
                reply = await cp.call(c201.MeterValues(evse_id=1, meter_value=[
                    {"timestamp": f"2026-11-20T16:0{minute}:00Z",
                     "sampled_value": [{"value": 1000 + minute}]}]))
                assert reply is not None  # acknowledged at once, whatever the sink does
            await until(lambda: len(sink.samples) == 5)

    run(body, sink=sink)
    assert sink.failures == 0


def test_samples_queued_behind_a_busy_sink_go_as_one_batch_in_order() -> None:
    class GatedSink(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.batches: list[int] = []

        async def put(self, samples: Sequence[MeterSample]) -> None:
            await self.gate.wait()
            self.batches.append(len(samples))
            await super().put(samples)

    sink = GatedSink()

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            for minute in range(5):  # the first waits at the sink, four queue behind it
                await cp.call(c201.MeterValues(evse_id=1, meter_value=[
                    {"timestamp": f"2026-11-20T16:0{minute}:00Z",
                     "sampled_value": [{"value": 1000 + minute}]}]))
            sink.gate.set()
            await until(lambda: len(sink.samples) == 5)

    run(body, sink=sink)
    assert sink.batches == [1, 4]
    assert [s.value for s in sink.samples.values()] == [1000, 1001, 1002, 1003, 1004]


def test_bad_meter_values_are_refused_by_field_and_the_rest_kept() -> None:
    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as cp:
            await boot(cp, "ocpp1.6")
            await cp.call(c16.MeterValues(connector_id=1, meter_value=[
                {"timestamp": "2026-11-20T16:00:00Z", "sampledValue": [
                    {"value": "abc"}, {"value": "-5", "unit": "Wh"}, {"value": "7"}]}]))
            await until(lambda: len(csms.rejected_values) == 2)
            await until(lambda: len(csms.sink.samples) == 1)  # type: ignore[attr-defined]

    csms = run(body)
    assert csms.rejected_values[0].startswith("meter_value[0].sampled_value[0].value")
    assert "register cannot be negative" in csms.rejected_values[1]


def test_ocpp21_action_without_handler_gets_not_implemented() -> None:
    # regression: ocpp 2.1.0 answers nothing at all to a 2.1 action it has no handler for
    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS21", "ocpp2.1", password="pw-21") as cp:
            await boot(cp, "ocpp2.1")
            with pytest.raises(OcppNotImplemented):
                await cp.call(c21.NotifyDisplayMessages(request_id=1), suppress=False)

    run(body)


def test_ev_charging_needs_are_recorded() -> None:
    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            reply = await cp.call(c201.NotifyEVChargingNeeds(evse_id=1, charging_needs={
                "requested_energy_transfer": "AC_three_phase",
                "departure_time": "2026-11-20T18:00:00Z",
                "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                           "ev_max_current": 16, "ev_max_voltage": 400}}))
            assert reply.status == "Accepted"

    csms = run(body)
    needs = csms.ev_needs[("CS201", 1)]
    assert needs.energy_kwh == 20.0
    assert needs.departure == datetime(2026, 11, 20, 18, tzinfo=UTC)


def tls_contexts(paths: dict[str, Path], *, mutual: bool) -> tuple[ssl.SSLContext, Any]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(paths["server_cert"], paths["server_key"])
    if mutual:
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(paths["ca"])

    def client(label: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(paths["ca"]))
        if label is not None:
            context.load_cert_chain(paths[f"{label}_cert"], paths[f"{label}_key"])
        return context

    return server, client


def test_security_profile_2_tls_with_basic_auth(tmp_path: Path) -> None:
    server, client = tls_contexts(make_pki(tmp_path, "CS201"), mutual=False)

    async def body(csms: Csms, url: str) -> None:
        assert url.startswith("wss://")
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201",
                           ssl_context=client(None)) as cp:
            assert (await boot(cp, "ocpp2.0.1")).status == "Accepted"
        with pytest.raises(InvalidStatus):
            async with station(url, "CS201", "ocpp2.0.1", password="nope",
                               ssl_context=client(None)):
                pass

    run(body, security_profile=2, ssl_context=server)


def test_security_profile_3_mutual_tls_checks_the_station_name(tmp_path: Path) -> None:
    server, client = tls_contexts(make_pki(tmp_path, "CS201"), mutual=True)

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", ssl_context=client("client")) as cp:
            assert (await boot(cp, "ocpp2.0.1")).status == "Accepted"
        with pytest.raises(InvalidStatus) as caught:  # a valid certificate for someone else
            async with station(url, "CS201", "ocpp2.0.1", ssl_context=client("stranger")):
                pass
        assert caught.value.response.status_code == 403
        with pytest.raises((ssl.SSLError, OSError, InvalidMessage)):  # no certificate
            async with station(url, "CS201", "ocpp2.0.1", ssl_context=client(None)):
                pass

    run(body, security_profile=3, ssl_context=server)


def test_malformed_date_time_is_refused_and_the_station_stays_connected() -> None:
    # ocpp never checks date-time formats: the CSMS refuses a bad one naming the field
    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            with pytest.raises(FormatViolationError, match="departure_time"):
                await cp.call(c201.NotifyEVChargingNeeds(evse_id=1, charging_needs={
                    "requested_energy_transfer": "AC_three_phase",
                    "departure_time": "tomorrow-ish"}), suppress=False)
            reply = await cp.call(c201.Heartbeat())  # the same session goes on
            assert reply.current_time.endswith("Z")
            assert "CS201" in csms.connected

    run(body)


def test_ocpp21_per_phase_limits_are_sent_with_their_spec_names() -> None:
    # regression: ocpp 2.1.0 turns limit_L2 into limitL2, which fails its own schema check
    evse = EVSES["CS21"]
    planned = pd.Series([11.0], index=pd.date_range(datetime(2026, 11, 20, 16, tzinfo=UTC),
                                                    periods=1, freq="15min", tz="UTC"))
    payload = set_charging_profile(ProfileRequest(
        evse=evse, power_kw=planned, interval=timedelta(minutes=15), profile_id=3,
        stack_level=1, purpose="TxDefaultProfile"))
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    period.update(limit=16.0, limit_L2=10.0, limit_L3=6.0)  # unbalanced phases

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS21", "ocpp2.1", password="pw-21") as cp:
            await boot(cp, "ocpp2.1")
            await until(lambda: "CS21" in csms.connected)
            assert await csms.set_charging_profile("CS21", payload) == "Accepted"
            received = cp.profiles[-1]["charging_schedule"][0]["charging_schedule_period"][0]
            per_phase = {k: v for k, v in received.items() if "l2" in k.lower()
                         or "l3" in k.lower()}
            assert sorted(per_phase.values()) == [6.0, 10.0]

    run(body)


@pytest.mark.parametrize(("station_id", "subprotocol", "password"), VERSIONS)
def test_a_profile_the_schema_refuses_is_not_sent_and_its_status_says_why(
        station_id: str, subprotocol: str, password: str) -> None:
    # set_charging_profile sends the encoder's camelCase payload as it is: still checked
    evse = EVSES[station_id]
    planned = pd.Series([7.4], index=pd.date_range(datetime(2026, 11, 20, 16, tzinfo=UTC),
                                                   periods=1, freq="15min", tz="UTC"))
    good = set_charging_profile(ProfileRequest(
        evse=evse, power_kw=planned, interval=timedelta(minutes=15), profile_id=3,
        stack_level=1, purpose="TxDefaultProfile"))
    bad = json.loads(json.dumps(good))
    (bad.get("chargingProfile") or bad["csChargingProfiles"])["stackLevel"] = "top"
    found: list[str] = []

    async def body(csms: Csms, url: str) -> None:
        async with station(url, station_id, subprotocol, password=password) as cp:
            await boot(cp, subprotocol)
            await until(lambda: station_id in csms.connected)
            found.append(await csms.set_charging_profile(station_id, bad))
            found.append(str(len(cp.profiles)))
            found.append(await csms.set_charging_profile(station_id, good))

    run(body)
    assert found[0].startswith("TypeConstraintViolationError") and "stackLevel" in found[0]
    assert found[1:] == ["0", "Accepted"]
