"""Dispatching a schedule to real ocpp-library stations: follow, ignore, refuse, fall back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from adapters.ocpp.csms import Csms
from aggregator.dispatch import dispatch, profile_id
from aggregator.model import Evse, Schedule
from tests.adapters.ocpp.test_csms import EVSES, boot, now, run, station, until

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
STEP = timedelta(minutes=15)


def schedule(columns: dict[str, list[float]]) -> Schedule:
    index = pd.date_range(T0, periods=4, freq=STEP, tz="UTC")
    power = pd.DataFrame(columns, index=index)
    return Schedule(power_kw=power, session_power_kw=power.copy(), soc=power * 0 + 0.5,
                    unmet_kwh=pd.Series(0.0, index=power.columns), interval=STEP,
                    objective=0.0, status="optimal", solver_stats={})


PLAN = {"A-09": [11.0, 7.4, 0.0, 0.0], "A-01": [5.0, 5.0, 5.0, 5.0],
        "A-11": [7.0, -7.0, -7.0, 0.0]}
EVSE_BY_ID = {evse.evse_id: evse for evse in EVSES.values()}


def test_followers_ignorers_and_refusers_are_told_apart() -> None:
    results: dict[str, object] = {}

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as cs16, \
                station(url, "CS201", "ocpp2.0.1", password="pw-201") as cs201, \
                station(url, "CS21", "ocpp2.1", password="pw-21") as cs21:
            cs201.mode = "ignore"  # accepts, then keeps drawing 32 A
            cs21.mode = "reject"  # refuses any profile that is not all zero
            for cp, protocol in ((cs16, "ocpp1.6"), (cs201, "ocpp2.0.1"), (cs21, "ocpp2.1")):
                await boot(cp, protocol)
            await until(lambda: len(csms.connected) == 3)
            deliveries = await dispatch(csms, schedule(PLAN), EVSE_BY_ID)
            results.update({d.evse_id: d for d in deliveries})
            results["cs16_profile"] = cs16.profiles[-1]
            results["cs21_profiles"] = list(cs21.profiles)

    run(body)
    follow, ignore, refuse = results["A-09"], results["A-01"], results["A-11"]
    assert (follow.status, follow.follows, follow.fallback) == ("Accepted", True, None)
    assert (ignore.status, ignore.follows) == ("Accepted", False)
    assert "beyond what it was sent" in ignore.detail
    assert (refuse.status, refuse.follows, refuse.fallback) == ("Rejected", False, "zero")
    zero = results["cs21_profiles"][-1]["charging_schedule"][0]["charging_schedule_period"]
    assert all(float(p["limit"]) == 0.0 for p in zero)
    sent16 = results["cs16_profile"]
    assert sent16["charging_profile_purpose"] == "TxDefaultProfile"  # no transaction yet
    assert sent16["charging_profile_id"] == profile_id("CS16", 1, "TxDefaultProfile")


def test_running_transaction_gets_a_tx_profile_and_unknown_evses_are_reported() -> None:
    results: dict[str, object] = {}

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            await cp.call(c201.TransactionEvent(
                event_type="Started", timestamp=now(), trigger_reason="Authorized", seq_no=0,
                transaction_info={"transaction_id": "tx-77"}, evse={"id": 1}))
            await until(lambda: ("CS201", 1) in csms.transactions)
            stray = Evse("Z-01", "site-z", 11.0)  # no station lists it
            deliveries = await dispatch(csms, schedule({**PLAN, "Z-01": [1.0] * 4}),
                                        {**EVSE_BY_ID, "Z-01": stray})
            results.update({d.evse_id: d for d in deliveries})
            results["profile"] = cp.profiles[-1]
            await cp.call(c201.TransactionEvent(  # the session ends: its TxProfile goes
                event_type="Ended", timestamp=now(), trigger_reason="EVDeparted", seq_no=1,
                transaction_info={"transaction_id": "tx-77"}, evse={"id": 1}))
            await until(lambda: bool(csms.cleared))
            results["left"] = list(cp.profiles)
            results["cleared"] = list(csms.cleared)

    run(body)
    assert results["cleared"] == [("CS201", 1, profile_id("CS201", 1, "TxProfile"), "Accepted")]
    assert results["left"] == []
    assert results["A-01"].follows is True  # type: ignore[attr-defined]
    profile = results["profile"]
    assert profile["charging_profile_purpose"] == "TxProfile"  # type: ignore[index]
    assert profile["transaction_id"] == "tx-77"  # type: ignore[index]
    assert results["A-09"].status == "NotConnected"  # type: ignore[attr-defined]
    assert results["A-11"].status == "NotConnected"  # type: ignore[attr-defined]
    assert results["Z-01"].status == "NotMapped"  # type: ignore[attr-defined]


def test_ocpp16_stop_transaction_clears_the_tx_profile() -> None:
    results: dict[str, object] = {}

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as cp:
            await boot(cp, "ocpp1.6")
            started = await cp.call(c16.StartTransaction(connector_id=1, id_tag="T",
                                                         meter_start=0, timestamp=now()))
            await dispatch(csms, schedule({"A-09": PLAN["A-09"]}), EVSE_BY_ID)
            assert cp.profiles[-1]["charging_profile_purpose"] == "TxProfile"
            await cp.call(c16.StopTransaction(meter_stop=100, timestamp=now(),
                                              transaction_id=started.transaction_id))
            await until(lambda: bool(csms.cleared))
            results["cleared"] = list(csms.cleared)

    run(body)
    assert results["cleared"] == [("CS16", 1, profile_id("CS16", 1, "TxProfile"), "Accepted")]


def test_each_station_gets_its_own_rate_unit() -> None:
    from dataclasses import replace

    from tests.adapters.ocpp.test_csms import STATIONS

    dc = tuple(replace(s, rate_unit="W") if s.station_id == "CS201" else s for s in STATIONS)
    results: dict[str, object] = {}

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp:
            await boot(cp, "ocpp2.0.1")
            await until(lambda: "CS201" in csms.connected)
            delivery = (await dispatch(csms, schedule({"A-01": [5.0] * 4}), EVSE_BY_ID))[0]
            results["delivery"] = delivery
            results["schedule"] = cp.profiles[-1]["charging_schedule"][0]

    run(body, stations=dc)
    assert results["delivery"].follows is True  # type: ignore[attr-defined]
    sent = results["schedule"]
    assert sent["charging_rate_unit"] == "W"  # type: ignore[index]
    assert sent["charging_schedule_period"][0]["limit"] == 5000.0  # type: ignore[index]


def test_station_wide_caps_go_to_connector_zero() -> None:
    results: dict[str, object] = {}
    index = pd.date_range(T0, periods=4, freq=STEP, tz="UTC")

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as cp16, \
                station(url, "CS201", "ocpp2.0.1", password="pw-201") as cp201:
            await boot(cp16, "ocpp1.6")
            await boot(cp201, "ocpp2.0.1")
            await until(lambda: len(csms.connected) == 2)
            caps = {"CS16": pd.Series([22.0] * 4, index=index),
                    "CS201": pd.Series([11.0, 11.0, 3.0, 3.0], index=index),
                    "CS99": pd.Series([1.0] * 4, index=index)}
            deliveries = await dispatch(csms, schedule({"A-09": PLAN["A-09"]}), EVSE_BY_ID,
                                        station_caps_kw=caps)
            results.update({d.evse_id: d for d in deliveries})
            # concurrent sends: find the caps by purpose, not by arrival order
            results["cp16"] = next(p for p in cp16.profiles
                                   if p["charging_profile_purpose"] == "ChargePointMaxProfile")
            results["cp201"] = cp201.profiles[-1]  # CS201 gets nothing but its cap

    run(body)
    assert results["CS16"].status == "Accepted"  # type: ignore[attr-defined]
    assert results["CS201"].status == "Accepted"  # type: ignore[attr-defined]
    assert results["CS99"].status == "NotMapped"  # type: ignore[attr-defined]
    cap16 = results["cp16"]
    assert cap16["charging_schedule"]["charging_schedule_period"][0]["limit"] == 31.8  # type: ignore[index]
    cap201 = results["cp201"]
    assert cap201["charging_profile_purpose"] == "ChargingStationMaxProfile"  # type: ignore[index]
    periods = cap201["charging_schedule"][0]["charging_schedule_period"]  # type: ignore[index]
    assert [p["limit"] for p in periods] == [15.9, 4.3]  # 11 kW and 3 kW, rounded down


def test_decreases_are_answered_before_any_increase_is_sent() -> None:
    """Swapping power between two EVSEs of one site never lets both draw at once."""
    results: dict[str, list[float]] = {}
    before = schedule({"A-09": [11.0] * 4, "A-01": [0.0] * 4})
    after = schedule({"A-09": [0.0] * 4, "A-01": [11.0] * 4})

    async def body(csms: Csms, url: str) -> None:
        async with station(url, "CS16", "ocpp1.6", password="pw-16") as lowered, \
                station(url, "CS201", "ocpp2.0.1", password="pw-201") as raised:
            for cp, protocol in ((lowered, "ocpp1.6"), (raised, "ocpp2.0.1")):
                await boot(cp, protocol)
            await until(lambda: len(csms.connected) == 2)
            lowered.answer_delay_s = 0.3  # a slow station must hold the increase back
            deliveries = await dispatch(csms, after, EVSE_BY_ID, verify=False,
                                        previous=before)
            assert all(d.follows for d in deliveries)
            results["lowered"], results["raised"] = lowered.received_at, raised.received_at

    run(body)
    assert results["raised"][0] >= results["lowered"][0] + 0.3


def test_which_evses_decrease_against_the_previous_plan() -> None:
    from dataclasses import replace

    from aggregator.dispatch import decreases

    before = schedule({"A": [11.0] * 4, "B": [0.0] * 4, "C": [5.0] * 4, "D": [-7.0] * 4,
                       "F": [5.0] * 4})
    later = replace(before, power_kw=before.power_kw.iloc[1:])
    now = {"A": [4.0] * 3, "B": [6.0] * 3, "C": [-2.0] * 3, "D": [-3.0] * 3, "E": [1.0] * 3,
           "F": [4.0, 6.0, 0.0]}
    index = pd.date_range(T0 + STEP, periods=3, freq=STEP, tz="UTC")
    plan = replace(before, power_kw=pd.DataFrame(now, index=index))
    # A and D go towards zero; B rises, C turns to export, E is new, F rises in the next
    # interval (which a slow dispatch may reach): they wait
    assert decreases(plan, before) == {"A", "D"}
    assert decreases(plan, later) == {"A", "D"}
    ends_early = replace(before, power_kw=before.power_kw.iloc[:2])  # covers T0+STEP only
    assert decreases(plan, ends_early) == {"A", "D", "F"}
    assert decreases(plan, None) == set(now)
    stale = replace(before, power_kw=before.power_kw.iloc[:1])
    assert decreases(plan, stale) == set()  # the previous plan ended: nothing is known
