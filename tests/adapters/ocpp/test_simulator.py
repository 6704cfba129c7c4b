"""Simulated stations (1.6, 2.0.1, 2.1) against gridflex's real CSMS and dispatch on 127.0.0.1.

Time is a fake clock the tests move by hand, so energy and power are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.v21 import call as c21

from adapters.ocpp.csms import Csms, CsmsConfig, MemorySink, StationConfig
from adapters.ocpp.simulator import SimEv, SimEvse, SimStation, Version
from aggregator.dispatch import dispatch
from aggregator.model import Evse, Measurand, MeterSample, OcppVersion, Schedule

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
STEP = timedelta(minutes=15)
KW_PER_A = 3 * 230 / 1000  # three phases at 230 V: 10 A is 6.9 kW


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def ev(**overrides: Any) -> SimEv:
    values: dict[str, Any] = {"battery_capacity_kwh": 60.0, "soc": 0.3,
                              "departure": T0 + timedelta(hours=4), "max_charge_kw": 11.0,
                              "energy_requested_kwh": 20.0}
    values.update(overrides)
    return SimEv(**values)


def schedule(columns: dict[str, list[float]]) -> Schedule:
    index = pd.date_range(T0, periods=len(next(iter(columns.values()))), freq=STEP, tz="UTC")
    power = pd.DataFrame(columns, index=index)
    return Schedule(power_kw=power, session_power_kw=power.copy(), soc=power * 0 + 0.5,
                    unmet_kwh=pd.Series(0.0, index=power.columns), interval=STEP,
                    objective=0.0, status="optimal", solver_stats={})


def run(body: Callable[[Csms, str], Awaitable[None]], *stations: StationConfig,
        **config: Any) -> Csms:
    """A CSMS on a free loopback port around ``body(csms, url)``; stopping it hands every
    queued meter sample to the sink, so the sink is complete when this returns."""
    csms = Csms(CsmsConfig(stations=stations, **config), MemorySink())

    async def main() -> None:
        port = await csms.start()
        try:
            await asyncio.wait_for(body(csms, f"ws://127.0.0.1:{port}"), 30)
        finally:
            await asyncio.wait_for(csms.stop(), 10)

    asyncio.run(main())
    return csms


@contextlib.asynccontextmanager
async def online(url: str, *stations: SimStation) -> AsyncIterator[None]:
    for station in stations:
        await station.connect(url)
    try:
        yield
    finally:
        for station in stations:
            await station.close()


def readings(csms: Csms, measurand: Measurand, evse_number: int = 1,
             context: str | None = None) -> list[float]:
    """One EVSE's values of a measurand in meter-time order (begin before end)."""
    order = {"Transaction.Begin": 0, "Sample.Periodic": 1, "Transaction.End": 2}
    samples: list[MeterSample] = [
        s for s in csms.sink.samples.values()  # type: ignore[attr-defined]
        if s.measurand is measurand and s.evse_number == evse_number
        and (context is None or s.context == context)]
    samples.sort(key=lambda s: (s.measured_at, order.get(s.context or "", 1)))
    return [s.value for s in samples]


VERSIONS: list[tuple[Version, OcppVersion]] = [
    ("1.6", OcppVersion.V16), ("2.0.1", OcppVersion.V201), ("2.1", OcppVersion.V21)]


@pytest.mark.parametrize(("version", "ocpp_version"), VERSIONS, ids=[v for v, _ in VERSIONS])
def test_station_follows_a_dispatched_plan_and_the_csms_gets_its_registers(
        version: Version, ocpp_version: OcppVersion) -> None:
    clock = FakeClock()
    sim = SimStation("SIM", version, "pw", {1: SimEvse(11.0)}, clock)
    evse = Evse("E-1", "site", 11.0, ocpp_version=ocpp_version)
    plan = [6.9, 4.14, 0.0, 6.9]  # 10 A, 6 A, 0 A, 10 A
    seen: dict[str, Any] = {}

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            tx = await sim.plug_in(1, ev(), "TAG-1")
            assert csms.transactions[("SIM", 1)] == tx
            assert sim.state[1].applied_kw == 11.0  # no profile yet: uncontrolled
            (delivery,) = await dispatch(csms, schedule({"E-1": plan}), {"E-1": evse})
            seen["delivery"] = delivery
            applied = [sim.state[1].applied_kw]
            for _ in plan:
                clock.advance(STEP)
                await sim.step()
                applied.append(sim.state[1].applied_kw)
            seen["applied"] = applied
            await sim.unplug(1)
            assert ("SIM", 1) not in csms.transactions
            seen["needs"] = csms.ev_needs.get(("SIM", 1))
            seen["tx"] = tx

    csms = run(body, StationConfig("SIM", "pw", {1: "E-1"}))
    delivery = seen["delivery"]
    assert (delivery.status, delivery.follows) == ("Accepted", True), delivery.detail
    assert sim.received[1][-1]["charging_profile_purpose"] == "TxProfile"
    # the plan, then uncontrolled again once the profile's validTo has passed
    assert seen["applied"] == pytest.approx([6.9, 4.14, 0.0, 6.9, 11.0])
    assert [kw for _, kw in sim.state[1].history] == pytest.approx(
        [0.0, 11.0, 6.9, 4.14, 0.0, 6.9, 11.0, 0.0])
    expected_wh = [0.0, 1725.0, 2760.0, 2760.0, 4485.0, 4485.0]  # begin, 4 steps, end
    assert readings(csms, Measurand.ENERGY_IMPORT) == expected_wh
    assert sim.state[1].imported_kwh == pytest.approx(4.485)
    assert set(readings(csms, Measurand.ENERGY_EXPORT)) == {0.0}  # present, never netted
    assert readings(csms, Measurand.POWER_IMPORT) == [4140.0, 0.0, 6900.0, 11000.0]
    soc = readings(csms, Measurand.SOC)
    assert soc[0] == 30.0 and soc[-1] == pytest.approx(30.0 + 448.5 / 60, abs=0.05)
    assert {s.transaction_id for s in csms.sink.samples.values()} == {  # type: ignore[attr-defined]
        seen["tx"]}
    if version == "1.6":
        assert seen["needs"] is None  # 1.6 has no charging needs
    else:
        needs = seen["needs"]
        assert needs.energy_kwh == 20.0 and needs.departure == T0 + timedelta(hours=4)


def test_v2g_ev_discharges_under_a_central_setpoint_and_only_export_rises() -> None:
    clock = FakeClock()
    sim = SimStation("V2G", "2.1", "pw", {1: SimEvse(11.0, max_export_kw=10.0)}, clock)
    evse = Evse("E-21", "site", 11.0, max_export_kw=10.0, v2g_capable=True,
                ocpp_version=OcppVersion.V21)
    car = ev(soc=0.6, energy_requested_kwh=6.0, max_discharge_kw=10.0, min_soc=0.3)
    seen: dict[str, Any] = {}

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            await sim.plug_in(1, car, "TAG-V2G")
            seen["needs"] = csms.ev_needs[("V2G", 1)]
            (delivery,) = await dispatch(csms, schedule({"E-21": [-6.9, -6.9, 0.0, 0.0]}),
                                         {"E-21": evse})
            seen["delivery"] = delivery
            seen["composite"] = await csms.get_composite_schedule("V2G", 1, 3600)
            assert sim.state[1].applied_kw == pytest.approx(-6.9)
            for _ in range(2):
                clock.advance(STEP)
                await sim.step()
            await sim.unplug(1)

    csms = run(body, StationConfig("V2G", "pw", {1: "E-21"}))
    needs = seen["needs"]
    assert (needs.max_discharge_kw, needs.max_charge_kw, needs.energy_kwh) == (10.0, 11.0, 6.0)
    assert needs.target_soc == pytest.approx(0.7)  # 60 % + 6 kWh of 60 kWh
    assert needs.min_v2x_energy_kwh == -18.0  # at 60 %: 18 kWh above the 30 % floor
    assert needs.max_energy_kwh == 6.0  # this EV takes what it asks, no more
    assert seen["delivery"].follows, seen["delivery"].detail
    first = seen["composite"]["schedule"]["charging_schedule_period"][0]
    assert first["operation_mode"] == "CentralSetpoint" and first["setpoint"] == -10.0  # A
    assert readings(csms, Measurand.ENERGY_EXPORT) == [0.0, 1725.0, 3450.0, 3450.0]
    assert set(readings(csms, Measurand.ENERGY_IMPORT)) == {0.0}
    assert readings(csms, Measurand.POWER_EXPORT)[0] == 6900.0
    assert sim.state[1].soc is None  # unplugged; the last SoC reading tells
    assert readings(csms, Measurand.SOC)[-1] == pytest.approx(100 * (0.6 - 3.45 / 60), abs=0.05)


def test_station_max_profile_caps_the_sum_and_shares_what_a_full_ev_leaves() -> None:
    clock = FakeClock()
    sim = SimStation("CAP", "2.0.1", "pw", {1: SimEvse(11.0), 2: SimEvse(11.0)}, clock)
    evses = {name: Evse(name, "site", 11.0) for name in ("C-1", "C-2")}
    nearly_full = ev(battery_capacity_kwh=20.0, soc=0.95, energy_requested_kwh=None)
    seen: dict[str, Any] = {}

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            await sim.plug_in(1, nearly_full, "TAG-1")
            await sim.plug_in(2, ev(), "TAG-2")
            assert sim.state[1].applied_kw + sim.state[2].applied_kw == 22.0
            deliveries = await dispatch(
                csms, schedule({"C-1": [11.0] * 4, "C-2": [11.0] * 4}), evses,
                station_caps_kw={"CAP": pd.Series([13.8] * 4, index=schedule(
                    {"C-1": [0.0] * 4}).intervals)})  # 20 A
            seen["deliveries"] = {d.evse_id: d for d in deliveries}
            seen["shares"] = (sim.state[1].applied_kw, sim.state[2].applied_kw)
            seen["station"] = await csms.get_composite_schedule("CAP", 0, 900)
            clock.advance(STEP)
            await sim.step()

    run(body, StationConfig("CAP", "pw", {1: "C-1", 2: "C-2"}))
    assert all(d.status == "Accepted" and d.follows for d in seen["deliveries"].values())
    assert seen["shares"] == pytest.approx((6.9, 6.9))  # 13.8 kW shared
    assert seen["station"]["schedule"]["charging_schedule_period"][0]["limit"] == 20.0
    # EV 1 takes its last 1 kWh at 6.9 kW, then EV 2 gets its TxProfile's 15.9 A
    full_h = 1.0 / 6.9
    tx_kw = 15.9 * KW_PER_A
    assert sim.state[1].imported_kwh == pytest.approx(1.0)
    assert sim.state[1].applied_kw == 0.0
    assert sim.state[2].imported_kwh == pytest.approx(6.9 * full_h + tx_kw * (0.25 - full_h))
    assert sim.state[2].applied_kw == pytest.approx(tx_kw)
    moment, power = sim.state[1].history[-1]
    assert power == 0.0 and abs(moment - (T0 + timedelta(hours=full_h))) < timedelta(
        milliseconds=1)


def test_energy_stops_at_a_full_battery_and_at_the_v2g_floor() -> None:
    clock = FakeClock()
    sim = SimStation("SOC", "2.1", "pw", {1: SimEvse(11.0), 2: SimEvse(11.0, 10.0)}, clock)
    evse = Evse("S-2", "site", 11.0, max_export_kw=10.0, v2g_capable=True,
                ocpp_version=OcppVersion.V21)

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            await sim.plug_in(1, ev(battery_capacity_kwh=40.0, soc=0.95), "TAG-1")
            await sim.plug_in(2, ev(battery_capacity_kwh=50.0, soc=0.35, max_discharge_kw=10.0,
                                    min_soc=0.3), "TAG-2")
            (delivery,) = await dispatch(csms, schedule({"S-2": [-10.0] * 4}), {"S-2": evse})
            assert delivery.follows, delivery.detail
            assert sim.state[2].applied_kw == -10.0  # W profile: exactly 10 kW
            clock.advance(timedelta(hours=1))
            await sim.step()
            await sim.unplug(1)
            await sim.unplug(2)

    csms = run(body, StationConfig("SOC", "pw", {1: "S-1", 2: "S-2"}, rate_unit="W"))
    assert sim.state[1].imported_kwh == pytest.approx(2.0)  # 5 % of 40 kWh, not 11 kWh
    assert sim.state[2].exported_kwh == pytest.approx(2.5)  # down to 30 % of 50 kWh
    assert sim.state[2].imported_kwh == 0.0
    assert readings(csms, Measurand.SOC, 1, "Transaction.End") == [100.0]
    assert readings(csms, Measurand.SOC, 2, "Transaction.End") == [30.0]
    assert readings(csms, Measurand.ENERGY_EXPORT, 2, "Transaction.End") == [2500.0]
    assert [kw for _, kw in sim.state[1].history] == [0.0, 11.0, 0.0]
    # plugged in (uncontrolled), the plan, the floor, the plan's end at 17:00, unplugged
    assert [kw for _, kw in sim.state[2].history] == [0.0, 11.0, -10.0, 0.0, 11.0, 0.0]
    times = {1: sim.state[1].history[2][0], 2: sim.state[2].history[3][0]}  # when each stopped
    assert abs(times[1] - (T0 + timedelta(hours=2 / 11))) < timedelta(milliseconds=1)
    assert abs(times[2] - (T0 + timedelta(hours=0.25))) < timedelta(milliseconds=1)


def test_a_station_that_ignores_profiles_is_flagged_by_dispatch() -> None:
    clock = FakeClock()
    sim = SimStation("LAX", "2.0.1", "pw", {1: SimEvse(11.0)}, clock, follows=False)
    evse = Evse("L-1", "site", 11.0)
    seen: dict[str, Any] = {}

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            await sim.plug_in(1, ev(), "TAG")
            (seen["delivery"],) = await dispatch(csms, schedule({"L-1": [6.9] * 4}),
                                                 {"L-1": evse})
            clock.advance(STEP)
            await sim.step()

    run(body, StationConfig("LAX", "pw", {1: "L-1"}))
    delivery = seen["delivery"]
    assert (delivery.status, delivery.follows) == ("Accepted", False)
    assert "beyond what it was sent" in delivery.detail
    assert len(sim.received[1]) == 1  # it took the profile ...
    assert sim.state[1].applied_kw == 11.0  # ... and kept charging at full power
    assert sim.state[1].imported_kwh == pytest.approx(11.0 / 4)


def _profile16(profile_id: int, purpose: str, stack_level: int, limit_a: float,
               hours: float, transaction_id: int | None = None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id, "stackLevel": stack_level,
        "chargingProfilePurpose": purpose, "chargingProfileKind": "Absolute",
        "validFrom": "2026-11-20T16:00:00Z",
        "validTo": (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "chargingSchedule": {"startSchedule": "2026-11-20T16:00:00Z", "chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_a,
                                                         "numberPhases": 3}]}}
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    return profile


def test_profiles_stack_clear_by_id_expire_and_bad_ones_are_rejected() -> None:
    clock = FakeClock()
    sim = SimStation("STACK", "1.6", "pw", {1: SimEvse(11.0)}, clock)
    steps: list[tuple[str, Any]] = []

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            tx = int(await sim.plug_in(1, ev(), "TAG"))

            async def send(connector: int, profile: dict[str, Any]) -> None:
                status = await csms.set_charging_profile(
                    "STACK", {"connectorId": connector, "csChargingProfiles": profile})
                steps.append((f"set {profile['chargingProfileId']}", status))

            async def note(label: str) -> None:
                composite = await csms.get_composite_schedule("STACK", 1, 900)
                assert composite is not None
                limit = composite["charging_schedule"]["charging_schedule_period"][0]["limit"]
                steps.append((label, (round(sim.state[1].applied_kw, 3), limit)))

            await send(0, _profile16(1, "TxDefaultProfile", 0, 12.0, hours=2))
            await note("default")
            await send(1, _profile16(2, "TxProfile", 1, 8.0, hours=1, transaction_id=tx))
            await note("tx")
            await send(1, _profile16(3, "TxProfile", 2, 6.0, 1, transaction_id=tx + 1))
            await send(1, _profile16(4, "ChargePointMaxProfile", 0, 6.0, hours=1))
            steps.append(("clear 2", await csms.clear_charging_profile("STACK", 2)))
            steps.append(("clear 2 again", await csms.clear_charging_profile("STACK", 2)))
            await note("cleared")
            clock.advance(timedelta(hours=2))  # the default's validTo has passed
            await sim.step()
            await note("expired")

    run(body, StationConfig("STACK", "pw", {1: "T-1"}))
    assert steps == [
        ("set 1", "Accepted"), ("default", (round(12 * KW_PER_A, 3), 12.0)),
        ("set 2", "Accepted"), ("tx", (round(8 * KW_PER_A, 3), 8.0)),
        ("set 3", "Rejected"),  # another transaction's TxProfile
        ("set 4", "Rejected"),  # a station cap belongs on connector 0
        ("clear 2", "Accepted"), ("clear 2 again", "Unknown"),
        ("cleared", (round(12 * KW_PER_A, 3), 12.0)),
        ("expired", (11.0, 15.9))]  # uncontrolled: the EVSE's 11 kW
    assert sim.installed_ids() == [1]
    assert sim.state[1].imported_kwh == pytest.approx(12 * KW_PER_A * 2)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_refused_id_token_starts_no_transaction(version: Version) -> None:
    sim = SimStation("AUTH", version, "pw", {1: SimEvse(11.0)}, FakeClock())

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            with pytest.raises(PermissionError, match="STRANGER"):
                await sim.plug_in(1, ev(), "STRANGER")
            assert ("AUTH", 1) not in csms.transactions
            assert sim.state[1].ev is None and sim.state[1].applied_kw == 0.0
            assert await sim.plug_in(1, ev(), "FRIEND") == csms.transactions[("AUTH", 1)]

    run(body, StationConfig("AUTH", "pw", {1: "A-1"}), authorized_ids=frozenset({"FRIEND"}))
    assert sim.state[1].transaction_id is not None


def test_ocpp21_station_answers_an_action_it_lacks_with_not_implemented() -> None:
    # ocpp 2.1.0 would send no reply at all; the CSMS would wait for its timeout
    sim = SimStation("Q21", "2.1", "pw", {1: SimEvse(11.0)}, FakeClock())

    async def body(csms: Csms, url: str) -> None:
        async with online(url, sim):
            with pytest.raises(OcppNotImplemented):
                await csms.connected["Q21"].call(c21.ClearCache(), suppress=False)

    run(body, StationConfig("Q21", "pw", {1: "Q-1"}), response_timeout_s=5.0)
