"""The controller: plans within the book's caps, re-plans on triggers, journals decisions.

The dispatcher here is a recorder of what would go to the stations (the CPMS connector is
tested against real stations in tests/adapters/ocpp and tests/aggregator/test_service.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.ocpp.csms import EvNeeds, StationEvent
from aggregator.constraints import ConstraintBook
from aggregator.controller import Controller, ControllerSettings
from aggregator.ledger import Ledger
from aggregator.model import (
    DemandCharge,
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    Measurand,
    MeterSample,
    ModelError,
    NodeKind,
    Schedule,
)
from aggregator.plans import journaled_plans, record_plan
from aggregator.sessions import SessionTracker

T0 = datetime(2026, 11, 22, 16, 5, tzinfo=UTC)
STEP = timedelta(minutes=15)


@dataclass(frozen=True)
class Answer:
    evse_id: str
    station_id: str | None
    status: str
    follows: bool
    fallback: str | None = None
    detail: str = ""


class Stations:
    """Records every schedule it is handed; answers per EVSE as configured."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.sent: list[Schedule] = []
        self.refuse = set(refuse)

    async def __call__(self, schedule: Schedule) -> list[Answer]:
        self.sent.append(schedule)
        return [Answer(e, "cs1", "Rejected" if e in self.refuse else "Accepted",
                       e not in self.refuse) for e in schedule.power_kw.columns]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def tree(n: int = 3) -> GridTree:
    return GridTree(
        nodes=(GridNode("feeder", NodeKind.FEEDER), GridNode("site", NodeKind.SITE, "feeder")),
        evses=tuple(Evse(f"e{i}", "site", max_import_kw=11.0) for i in range(1, n + 1)))


def rig(*, refuse: Sequence[str] = (), n: int = 3, journal: Ledger | None = None,
        settings: ControllerSettings | None = None) -> tuple[Controller, Stations, Clock,
                                                               ConstraintBook]:
    grid = tree(n)
    clock = Clock(T0)
    book = ConstraintBook(started_at=T0)
    tracker = SessionTracker({("cs1", i): grid.evse(f"e{i}") for i in range(1, n + 1)})
    stations = Stations(refuse)
    controller = Controller(grid, book, tracker, stations, clock=clock,
                            settings=settings or ControllerSettings(horizon_intervals=16,
                                                                    debounce_s=0.01),
                            journal=(lambda p: record_plan(journal, p)) if journal else None)
    return controller, stations, clock, book


def site_cap(import_kw: float, start: datetime = T0, hours: float = 2) -> GridConstraint:
    return GridConstraint(node_id="site", start=start, end=start + timedelta(hours=hours),
                          source="openadr", source_ref="event e1 mod 0", received_at=start,
                          import_max_kw=import_kw)


def plug(controller: Controller, evse: int, *, energy_kwh: float = 20.0,
         hours: float = 4) -> None:
    controller.on_station_event(StationEvent("started", "cs1", evse, f"tx{evse}", T0))
    controller.on_station_event(StationEvent("needs", "cs1", evse, f"tx{evse}", needs=EvNeeds(
        received_at=T0, departure=T0 + timedelta(hours=hours), energy_kwh=energy_kwh, raw={})))


def power(schedule: Schedule, evse: str, at: datetime) -> float:
    return float(schedule.power_kw[evse].asof(at))


def test_plan_starts_at_the_current_interval_and_keeps_the_site_under_its_cap(
        tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    controller, stations, _, book = rig(journal=ledger)
    book.publish("openadr", "event:e1", [site_cap(15.0)], at=T0)
    for evse in (1, 2, 3):
        plug(controller, evse)
    plan = asyncio.run(controller.replan())
    schedule = stations.sent[-1]
    assert schedule.intervals[0] == datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
    site_load = schedule.power_kw.sum(axis=1)
    assert site_load[: 8].max() <= 15.0 + 1e-6  # the two capped hours
    assert site_load[8:].max() > 15.0  # after the event the EVs catch up
    assert plan.unmet_kwh == pytest.approx(0.0, abs=1e-6)
    assert plan.status == "optimal" and plan.fallback == "" and plan.sessions == 3
    kinds = {t.kind for t in plan.triggers}
    assert {"constraint", "session_start", "needs"} <= kinds
    stored = journaled_plans(ledger)
    assert [p.plan_id for p in stored] == [plan.plan_id]
    assert stored[0].power_kw == plan.power_kw and len(stored[0].answers) == 3
    assert record_plan(ledger, plan) is False  # idempotent on the plan id


def test_a_book_change_wakes_the_loop_and_bursts_are_debounced_into_one_plan() -> None:
    controller, stations, _, book = rig(settings=ControllerSettings(
        horizon_intervals=8, debounce_s=0.05, period_s=3600))

    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(controller.run(stop))
        while not controller.plans:  # the startup plan
            await asyncio.sleep(0.01)
        plug(controller, 1)
        for kw in (9.0, 8.0, 7.0):  # a burst: three changes, one plan
            book.publish("openadr", "event:e1", [site_cap(kw)], at=T0)
        while len(controller.plans) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        stop.set()
        await runner

    asyncio.run(main())
    assert len(controller.plans) == 2
    second = controller.plans[1]
    assert sum(t.kind == "constraint" for t in second.triggers) == 3
    assert power(stations.sent[-1], "e1", T0) == pytest.approx(7.0)


def test_an_ev_drawing_more_than_planned_becomes_fixed_load_and_the_rest_make_room() -> None:
    controller, stations, clock, book = rig(settings=ControllerSettings(
        horizon_intervals=16, debounce_s=0.01, deviation_kw=0.5))
    book.publish("openadr", "event:e1", [site_cap(20.0)], at=T0)
    plug(controller, 1)
    plug(controller, 2)
    asyncio.run(controller.replan())
    planned = {e: power(stations.sent[-1], e, T0) for e in ("e1", "e2")}
    assert sum(planned.values()) == pytest.approx(20.0)
    low, other = sorted(planned, key=planned.__getitem__)
    assert planned[low] <= 10.0 + 1e-6
    clock.now = T0 + timedelta(minutes=1)
    controller.on_samples([MeterSample("cs1", int(low[1]), f"tx{low[1]}", clock.now,
                                       Measurand.POWER_IMPORT, 11_000.0, clock.now)])
    assert low in controller.unruly
    plan = asyncio.run(controller.replan())
    assert any(t.kind == "deviation" for t in plan.triggers)
    assert low not in plan.power_kw or max(plan.power_kw[low]) == 0.0
    assert power(stations.sent[-1], other, clock.now) == pytest.approx(9.0)  # 20 - 11


def test_an_ev_taking_less_than_planned_is_planned_with_what_it_takes() -> None:
    controller, stations, clock, _ = rig()
    plug(controller, 1, energy_kwh=30.0, hours=3)
    asyncio.run(controller.replan())
    planned = power(stations.sent[-1], "e1", T0)
    assert planned > 5.0
    clock.now = T0 + timedelta(minutes=2)
    controller.on_samples([MeterSample("cs1", 1, "tx1", clock.now, Measurand.POWER_IMPORT,
                                       7_400.0, clock.now)])  # a 7.4 kW onboard charger
    assert "e1" not in controller.unruly
    asyncio.run(controller.replan())
    assert stations.sent[-1].power_kw["e1"].max() == pytest.approx(7.4)


def test_a_station_refusing_its_profile_triggers_a_plan_that_treats_it_as_uncontrolled() -> None:
    controller, stations, _, book = rig(refuse=["e2"])
    book.publish("openadr", "event:e1", [site_cap(15.0)], at=T0)
    plug(controller, 1)
    plug(controller, 2)
    asyncio.run(controller.replan())
    assert "e2" in controller.unruly
    plan = asyncio.run(controller.replan())
    assert [t.kind for t in plan.triggers] == ["rejected"]
    assert power(stations.sent[-1], "e1", T0) == pytest.approx(4.0)  # 15 - e2's 11 kW


def test_a_plan_that_cannot_meet_a_cap_is_replaced_by_zero_power() -> None:
    controller, stations, _, book = rig(refuse=["e2"])
    plug(controller, 1)
    plug(controller, 2)
    asyncio.run(controller.replan())
    book.publish("openadr", "event:e1", [site_cap(5.0)], at=T0)  # below e2's 11 kW alone
    plan = asyncio.run(controller.replan())
    assert plan.fallback  # the solver's verdict or the violations it would cause
    assert stations.sent[-1].power_kw.abs().to_numpy().max() == 0.0


def test_metered_energy_and_overstay_shape_the_next_plan() -> None:
    controller, stations, clock, _ = rig()
    plug(controller, 1, energy_kwh=20.0, hours=1)

    def metered(kwh_into_battery: float) -> None:
        controller.on_samples([
            MeterSample("cs1", 1, "tx1", T0, Measurand.ENERGY_IMPORT, 0.0, T0),
            MeterSample("cs1", 1, "tx1", clock.now, Measurand.ENERGY_IMPORT,
                        kwh_into_battery * 1000 / 0.95, clock.now)])

    clock.now = T0 + timedelta(hours=2)  # past its departure, still plugged in, 10 kWh short
    metered(10.0)
    plan = asyncio.run(controller.replan())
    assert plan.sessions == 1 and plan.unmet_kwh == pytest.approx(0.0, abs=1e-6)
    planned = stations.sent[-1].power_kw["e1"]
    assert planned.sum() * 0.25 * 0.95 == pytest.approx(10.0, rel=1e-3)  # planned for it
    clock.now += timedelta(minutes=30)
    metered(20.0)  # its wish is met: nothing more to charge
    asyncio.run(controller.replan())
    assert stations.sent[-1].power_kw["e1"].abs().max() < 1e-6
    controller.on_station_event(StationEvent("ended", "cs1", 1, "tx1", clock.now))
    assert asyncio.run(controller.replan()).sessions == 0


def test_settings_are_checked_by_name() -> None:
    with pytest.raises(ModelError, match="debounce_s"):
        ControllerSettings(debounce_s=0)
    with pytest.raises(ModelError, match="interval"):
        ControllerSettings(interval=timedelta(seconds=0.5))


def test_a_polled_limit_renewed_unchanged_does_not_trigger_a_plan_but_a_new_value_does() -> None:
    controller, _, _, book = rig()
    for minute in (0, 1, 2):  # the same 15 kW, renewed with a later window each poll
        at = T0 + timedelta(minutes=minute)
        book.publish("openadr", "event:e1", [site_cap(15.0, start=at)], at=at)
    assert [t.kind for t in controller._pending] == ["constraint"]
    book.publish("openadr", "event:e1", [site_cap(12.0, start=T0 + timedelta(minutes=3))],
                 at=T0 + timedelta(minutes=3))
    assert [t.kind for t in controller._pending] == ["constraint", "constraint"]


def test_a_demand_charge_in_the_book_triggers_a_plan_with_a_lower_site_peak() -> None:
    """Three EVs wanting 20 kWh in 4 h charge at 33 kW at first; once the book holds a
    demand charge on the site's peak, the controller re-plans (a "prices" trigger) and
    spreads the energy evenly over the horizon: the peak is the mean, under half of 33 kW."""
    controller, stations, _, book = rig()
    for evse in (1, 2, 3):
        plug(controller, evse)
    asyncio.run(controller.replan())
    before = stations.sent[-1].power_kw.sum(axis=1).max()
    charge = DemandCharge(node_id="site", start=T0, end=T0 + timedelta(hours=4),
                          price_per_kw=5.0, source="openadr", source_ref="event dc mod 0",
                          received_at=T0)
    book.publish_demand_charges("openadr", "event:dc", [charge], at=T0)
    assert [t.kind for t in controller._pending] == ["prices"]
    plan = asyncio.run(controller.replan())
    site_load = stations.sent[-1].power_kw.sum(axis=1)
    assert before == pytest.approx(33.0)
    assert site_load.max() == pytest.approx(site_load.mean(), rel=1e-6)
    assert site_load.max() < before / 2
    assert plan.unmet_kwh == pytest.approx(0.0, abs=1e-6)


def test_a_replan_inside_a_demand_charge_window_keeps_the_peak_already_reached() -> None:
    """An hour into a 4 h window the site has run at the plan's peak; the next plan gets
    that as the window's floor (it pays only for more), instead of a fresh charge on the
    remaining hours that would make finishing the energy look dear."""
    controller, stations, clock, book = rig()
    charge = DemandCharge(node_id="site", start=T0, end=T0 + timedelta(hours=4),
                          price_per_kw=5.0, source="openadr", source_ref="event dc mod 0",
                          received_at=T0)
    book.publish_demand_charges("openadr", "event:dc", [charge], at=T0)
    for evse in (1, 2, 3):
        plug(controller, evse)
    asyncio.run(controller.replan())
    ran = stations.sent[-1].power_kw.sum(axis=1)
    assert controller.scenario_at(T0).demand_charges[0].peak_reached_kw == 0.0
    clock.now = T0 + timedelta(hours=1)
    (later,) = controller.scenario_at(clock.now).demand_charges
    first_hour = ran[ran.index < T0 + timedelta(hours=1)]
    assert later.peak_reached_kw == pytest.approx(first_hour.max(), rel=1e-6)
    assert later.peak_reached_kw > 0
    assert later.price_per_kw == charge.price_per_kw and later.source_ref == charge.source_ref
    # outside the window, nothing has been reached
    clock.now = T0 + timedelta(hours=5)
    assert all(c.peak_reached_kw == 0.0 for c in controller.scenario_at(clock.now)
               .demand_charges)


def test_an_ev_tapering_below_the_minimum_current_is_still_planned_at_the_minimum() -> None:
    """A car measured at 3.5 kW against 11 kW planned (tapering when nearly full): its
    limit is learned, but not below the EVSE's 4.14 kW minimum, or every later plan would
    be sent as 0 and the car starved for the rest of its stay."""
    controller, stations, clock, _ = rig()
    plug(controller, 1, energy_kwh=30.0, hours=4)
    asyncio.run(controller.replan())
    assert power(stations.sent[-1], "e1", T0) > 4.14
    clock.now = T0 + timedelta(minutes=5)
    controller.on_samples([MeterSample("cs1", 1, "tx1", clock.now, Measurand.POWER_IMPORT,
                                       3500.0, clock.now)])
    minimum = tree().evse("e1").min_power_kw
    (live,) = controller.tracker.live.values()
    assert live.ev_limit_kw == pytest.approx(minimum)
    asyncio.run(controller.replan())
    planned = stations.sent[-1].power_kw["e1"]
    assert planned.max() == pytest.approx(minimum, rel=1e-6)  # planned, not starved


def test_a_plan_below_the_minimum_current_is_expected_as_zero_not_as_a_deviation() -> None:
    controller, stations, clock, book = rig()
    book.publish("openadr", "event:e1", [site_cap(2.0)], at=T0)  # below the 4.1 kW minimum
    plug(controller, 1, energy_kwh=1.0, hours=1)
    asyncio.run(controller.replan())
    series = stations.sent[-1].power_kw["e1"]
    low = series[(series > 0) & (series < tree().evse("e1").min_power_kw)]
    assert len(low) > 0 and series.max() <= 2.0 + 1e-6
    clock.now = low.index[0].to_pydatetime() + timedelta(minutes=2)
    controller.on_samples([MeterSample("cs1", 1, "tx1", clock.now, Measurand.POWER_IMPORT,
                                       0.0, clock.now)])
    assert controller._pending == [] and controller.unruly == {}


def test_a_failed_solve_is_journaled_with_no_objective(tmp_path: Path) -> None:
    from dataclasses import replace as changed

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    controller, _, _, _ = rig(journal=ledger)
    plan = asyncio.run(controller.replan())
    failed = changed(plan, plan_id="failed", status="error", objective=float("nan"))
    assert record_plan(ledger, failed)
    (stored,) = [p for p in journaled_plans(ledger) if p.plan_id == "failed"]
    assert stored.status == "error" and stored.objective != stored.objective  # NaN back
    assert failed.to_json()["objective"] is None  # valid JSON for the API


def test_the_controller_says_when_it_is_planning_and_what_waits() -> None:
    controller, _, _, _ = rig()
    seen: list[tuple[bool, int]] = []
    release = asyncio.Event()

    async def slow_dispatch(schedule: Schedule) -> list[Answer]:
        seen.append((controller.planning, controller.pending_triggers))
        controller.request("operator", "while dispatching")
        await release.wait()
        return []

    controller.dispatcher = slow_dispatch

    async def main() -> None:
        controller.request("operator", "first")
        assert (controller.planning, controller.pending_triggers) == (False, 1)
        planning = asyncio.create_task(controller.replan())
        while not seen:
            await asyncio.sleep(0.001)
        assert (controller.planning, controller.pending_triggers) == (True, 1)
        release.set()
        plan = await planning
        assert [t.detail for t in plan.triggers] == ["first"]

    asyncio.run(main())
    assert seen == [(True, 0)]
    assert (controller.planning, controller.pending_triggers) == (False, 1)


def test_a_time_limited_milp_plan_is_dispatched_and_journaled_as_feasible() -> None:
    """A MILP stopped by its time limit with a schedule in hand is used, but the journal
    says "feasible", not "optimal", so an operator can tell the two apart."""
    from aggregator.scenario import Scenario
    from optimizer.solution import Status

    controller, stations, _, _ = rig(settings=ControllerSettings(
        horizon_intervals=16, debounce_s=0.01, method="milp"))
    plug(controller, 1)
    original = controller._solve

    def time_limited(scenario: Scenario) -> tuple[Schedule, str, float]:
        schedule, _, objective = original(scenario)
        return schedule, Status.FEASIBLE, objective

    controller._solve = time_limited  # type: ignore[method-assign]
    plan = asyncio.run(controller.replan())
    assert plan.status == "feasible" and plan.fallback == ""
    assert stations.sent[-1].power_kw["e1"].max() > 0  # dispatched, not the zero plan
