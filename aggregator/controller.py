"""The controller: re-plans the fleet on events and on a timer, and dispatches the plan.

Triggers (a constraint book change, a session starting or ending, an EV's needs, a meter
reading far from the plan, a station not following its profile, the periodic tick) are
debounced into one re-plan.  Each re-plan looks ahead a fixed horizon from the current
interval (receding horizon) with the batteries as measured, solves off the event loop,
trims it so that no cap rests on one EV's charging offsetting another's discharging
(``audit.firm_caps``: either may stop), checks the result against every cap in force,
and hands it to the dispatcher (the CPMS
connector).  A plan that fails or breaks a cap is replaced by a zero-power plan, the one
plan that can never exceed an import limit.  Every decision goes to the plan journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pandas as pd
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from adapters.ocpp.csms import StationEvent
from aggregator.audit import cap_violations, firm_caps
from aggregator.clock import Clock, floor_to
from aggregator.constraints import BookChange, ChangeKind, ConstraintBook
from aggregator.horizon import roll_forward
from aggregator.model import (
    DemandCharge,
    Evse,
    GridTree,
    MeterSample,
    ModelError,
    NodeLoad,
    Schedule,
)
from aggregator.planning import build_problem, to_schedule
from aggregator.plans import PlanRecord, StationAnswer, Trigger
from aggregator.scenario import PlanSettings, Scenario
from aggregator.sessions import SessionTracker
from optimizer import solve

log = logging.getLogger("gridflex.controller")

Method = Literal["auto", "lp", "milp", "decomposed", "edf", "llf", "round_robin"]
METHODS: tuple[str, ...] = ("auto", "lp", "milp", "decomposed", "edf", "llf", "round_robin")


class Answer(Protocol):
    """What a dispatcher reports per EVSE (``aggregator.dispatch.Delivery`` fits)."""

    @property
    def evse_id(self) -> str: ...
    @property
    def station_id(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def follows(self) -> bool: ...
    @property
    def fallback(self) -> str | None: ...
    @property
    def detail(self) -> str: ...


Dispatcher = Callable[[Schedule], Awaitable[Sequence[Answer]]]
UNREACHABLE = ("NotConnected", "NotMapped")
USABLE = ("optimal", "feasible")  # a feasible MILP plan (time or gap limit) is dispatched
RAN_KEPT = timedelta(days=40)
"""How long the load each node ran at is kept for demand charges (a monthly peak fits)."""


@dataclass(frozen=True)
class ControllerSettings:
    """How and how often to plan.  ``debounce_s`` and ``period_s`` are wall-clock seconds;
    the planning interval and horizon are on the service clock."""

    interval: timedelta = timedelta(minutes=15)
    horizon_intervals: int = 96
    debounce_s: float = 0.2
    period_s: float = 300.0
    deviation_kw: float = 1.0
    overstay: timedelta = timedelta(hours=1)
    method: Method = "auto"
    time_limit_s: float | None = 30.0
    keep_plans: int = 200

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0) or self.interval.total_seconds() % 1:
            raise ModelError("interval", "must be a positive whole number of seconds")
        if not 1 <= self.horizon_intervals <= 10_000:
            raise ModelError("horizon_intervals", "must be in 1..10000")
        for name in ("debounce_s", "period_s", "deviation_kw"):
            if not getattr(self, name) > 0:
                raise ModelError(name, f"must be > 0, got {getattr(self, name)!r}")


class Controller:
    """Receding-horizon control of every EVSE in ``tree`` under the book's limits."""

    def __init__(self, tree: GridTree, book: ConstraintBook, tracker: SessionTracker,
                 dispatcher: Dispatcher, *, clock: Clock,
                 settings: ControllerSettings | None = None,
                 plan_settings: PlanSettings | None = None,
                 journal: Callable[[PlanRecord], object] | None = None,
                 base_loads: Sequence[NodeLoad] = ()) -> None:
        self.tree = tree
        self.book = book
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.clock = clock
        self.settings = settings or ControllerSettings()
        self.plan_settings = plan_settings or PlanSettings()
        self.journal = journal
        self.base_loads = tuple(base_loads)  # non-EV load forecast of nodes (kW)
        self.plans: list[PlanRecord] = []
        self.schedule: Schedule | None = None
        self.unruly: dict[str, str] = {}  # EVSE id -> why it is planned as uncontrolled
        self._evses: dict[str, Evse] = {e.evse_id: e for e in tree.evses}
        self._pending: list[Trigger] = []
        self._wake = asyncio.Event()
        self._flagged: set[str] = set()  # EVSEs that already triggered since the last plan
        self._dispatched_at: datetime | None = None
        self._planning = False
        self._done: list[Callable[[PlanRecord], None]] = []
        self._last_values: dict[tuple[str, str], tuple[tuple[Any, ...], ...]] = {}
        # node -> interval start -> planned net import (kW) of the plan that ran it: the
        # peaks demand charges have already reached
        self._ran: dict[str, dict[datetime, float]] = {}
        book.subscribe(self._on_book_change)

    # -- triggers ----------------------------------------------------------------------
    def request(self, kind: str, detail: str) -> None:
        """Ask for a re-plan; requests within the debounce window become one plan."""
        self._pending.append(Trigger(kind, detail, self.clock(), time.monotonic()))
        self._wake.set()

    @property
    def pending_triggers(self) -> int:
        """Triggers waiting for the next plan (0 with nothing to do)."""
        return len(self._pending)

    @property
    def planning(self) -> bool:
        """True while a plan is being solved or dispatched."""
        return self._planning

    def on_plan(self, listener: Callable[[PlanRecord], None]) -> None:
        """Call ``listener`` with every finished plan (the demo and the bench time on it)."""
        self._done.append(listener)

    def _on_book_change(self, change: BookChange) -> None:
        if change.kind is ChangeKind.PUBLISHED:
            values = tuple(sorted(((c.node_id, c.import_max_kw, c.export_max_kw, c.setpoint_kw)
                                   for c in change.constraints), key=repr))
            key = (change.source, change.scope)
            renewal = self._last_values.get(key) == values
            self._last_values[key] = values
            if renewal:  # a polled source saying the same again: the periodic tick suffices
                return
        elif change.kind is ChangeKind.WITHDRAWN:
            self._last_values.pop((change.source, change.scope), None)
        kind = {ChangeKind.PUBLISHED: "constraint", ChangeKind.WITHDRAWN: "constraint",
                ChangeKind.PRICES: "prices"}.get(change.kind, "link")
        self.request(kind, f"{change.source} {change.kind.value} {change.scope}: "
                           f"{change.reason}".strip())

    def on_station_event(self, event: StationEvent) -> None:
        """Sessions start and end with transactions; an EV's needs re-derive its session."""
        at = event.at or self.clock()
        where = f"{event.station_id}/{event.evse_number}"
        tx = event.transaction_id
        if event.kind == "started" and tx is not None:
            if self.tracker.start(event.station_id, event.evse_number, tx, at) is not None:
                self.request("session_start", f"{where} transaction {tx}")
        elif event.kind == "ended":
            live = self.tracker.end(event.station_id, event.evse_number, tx, at)
            if live is not None:
                self.unruly.pop(live.session.evse_id, None)
                self.request("session_end", f"{where} transaction {tx}")
        elif event.kind == "needs" and event.needs is not None:
            if self.tracker.update_needs(event.station_id, event.evse_number, event.needs):
                self.request("needs", f"{where}: the EV sent its charging needs")
        elif event.kind in ("connected", "disconnected"):  # a new station gets its profile
            self.request("station", f"{event.station_id} {event.kind}")

    def on_samples(self, samples: Iterable[MeterSample]) -> None:
        """Meter readings: SoC and registers for planning; a reading far from the plan
        triggers a re-plan (an EV taking less learns its limit, one taking more than it
        was sent is planned as uncontrolled load from then on)."""
        readings = self.tracker.observe(samples)
        schedule, since = self.schedule, self._dispatched_at
        if schedule is None or since is None:
            return
        for reading in readings:
            if reading.at <= since or reading.evse_id in self._flagged \
                    or reading.evse_id not in schedule.power_kw.columns:
                continue
            planned = planned_kw(schedule, reading.evse_id, reading.at)
            if planned is None:
                continue
            if 0.0 < planned < self._evses[reading.evse_id].min_power_kw:
                planned = 0.0  # below the minimum current the profile says 0 (see profiles)
            gap = reading.power_kw - planned
            if abs(gap) <= self.settings.deviation_kw:
                continue
            self._flagged.add(reading.evse_id)
            if reading.power_kw > max(planned, 0.0) + self.settings.deviation_kw or \
                    reading.power_kw < min(planned, 0.0) - self.settings.deviation_kw:
                self.unruly[reading.evse_id] = (  # beyond what it was sent: a safety matter
                    f"measured {reading.power_kw:.1f} kW against {planned:.1f} kW planned")
            elif planned > 0.0 and gap < 0.0 and reading.power_kw > self.settings.deviation_kw:
                # an EV charging, but slower than planned, takes what it takes (taper, an
                # onboard charger smaller than the EVSE); one at 0 may only be late to start.
                # Never below the EVSE's minimum: a plan under it is sent as 0, and a car
                # that tapered once would get nothing for the rest of its stay
                self.tracker.limit_ev(reading.evse_id, max(
                    reading.power_kw, self._evses[reading.evse_id].min_power_kw))
            self.request("deviation", f"{reading.evse_id}: measured {reading.power_kw:.1f} kW, "
                                      f"planned {planned:.1f} kW")

    # -- running -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Plan on every trigger (debounced) and every ``period_s`` until ``stop`` is set."""
        scheduler = AsyncIOScheduler()
        scheduler.add_job(self.request, "interval", seconds=self.settings.period_s,
                          args=("periodic", "timer"))
        scheduler.start()
        self.request("startup", "service started")
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait({woken, stopping}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if stop.is_set():
                    break
                await asyncio.sleep(self.settings.debounce_s)
                await self.replan()
        finally:
            stopping.cancel()
            scheduler.shutdown(wait=False)

    async def replan(self) -> PlanRecord:
        """One plan from now with every pending trigger, dispatched and journaled."""
        self._planning = True
        try:
            return await self._replan()
        finally:
            self._planning = False

    async def _replan(self) -> PlanRecord:
        triggers, self._pending = tuple(self._pending), []
        self._wake.clear()
        if not triggers:
            triggers = (Trigger("manual", "replan()", self.clock(), time.monotonic()),)
        now = self.clock()
        scenario = self.scenario_at(now)
        started = time.perf_counter()
        schedule, status, objective = await asyncio.to_thread(self._solve, scenario)
        solve_s = time.perf_counter() - started
        fallback = ""
        if status not in USABLE:
            fallback = f"solver: {status}"
        else:
            # no cap may rest on one EV's charging offsetting another's discharging
            schedule, trimmed = firm_caps(scenario, schedule)
            if trimmed:
                log.info("plan trimmed in %d (node, interval) places so that its caps hold "
                         "whatever the EVs take", trimmed)
            broken = cap_violations(scenario, schedule)
            if broken:
                fallback = f"{len(broken)} cap violations in the plan: {broken[:3]}"
        if fallback:
            log.error("plan replaced by zero power: %s", fallback)
            schedule = _zero(schedule)
        started = time.perf_counter()
        answers = await self.dispatcher(schedule)
        dispatch_s = time.perf_counter() - started
        latency_s = time.monotonic() - min(t.seen_s for t in triggers)
        self.schedule, self._dispatched_at = schedule, self.clock()
        self._flagged.clear()
        for answer in answers:
            if answer.status not in UNREACHABLE and not answer.follows \
                    and answer.evse_id in self._evses and answer.evse_id not in self.unruly:
                self.unruly[answer.evse_id] = f"{answer.status}: {answer.detail}".strip(": ")
                self.request("rejected", f"{answer.evse_id}: {answer.status} {answer.detail}")
        plan = PlanRecord(
            plan_id=uuid.uuid4().hex, planned_at=now, horizon_start=scenario.start,
            interval=scenario.interval, status=status, objective=objective, solve_s=solve_s,
            dispatch_s=dispatch_s, latency_s=latency_s, sessions=len(scenario.sessions),
            unmet_kwh=float(schedule.unmet_kwh.sum()), fallback=fallback, triggers=triggers,
            power_kw={e: [round(float(v), 3) for v in schedule.power_kw[e]]
                      for e in schedule.power_kw.columns if schedule.power_kw[e].abs().max()},
            answers=tuple(StationAnswer(a.evse_id, a.station_id, a.status, a.follows,
                                        a.fallback, a.detail) for a in answers))
        self.plans = [*self.plans, plan][-self.settings.keep_plans:]
        log.info("plan %s: %d sessions, %s, solve %.3f s, dispatch %.3f s, latency %.3f s "
                 "(%s)", plan.plan_id[:8], plan.sessions, status, solve_s, dispatch_s,
                 latency_s, ", ".join(sorted({t.kind for t in triggers})))
        if self.journal is not None:
            try:
                await asyncio.to_thread(self.journal, plan)
            except Exception:  # the plan is dispatched; a journal outage must not stop control
                log.exception("plan %s could not be journaled", plan.plan_id)
        for listener in self._done:
            listener(plan)
        return plan

    # -- planning ----------------------------------------------------------------------
    def planned_node_kw(self, node_id: str, start: datetime, end: datetime) -> float:
        """The current plan's mean EV load below ``node_id`` over a window; 0 before the
        first plan (the VEN's baseline for relative LOAD_DISPATCH signals)."""
        if self.schedule is None:
            return 0.0
        load = self.schedule.node_load_kw(self.tree, node_id)
        window = load[(load.index >= start) & (load.index < end)]
        return float(window.mean()) if len(window) else 0.0

    def scenario_at(self, now: datetime) -> Scenario:
        """What to plan from the interval holding ``now``: running sessions with their
        measured SoC, uncontrolled EVSEs as fixed load, the book's limits and prices."""
        s = self.settings
        start = floor_to(now, s.interval)
        sessions, soc = self.tracker.planning_sessions(start, s.overstay)
        end = start + s.horizon_intervals * s.interval
        plugged = {x.evse_id for x in sessions}
        loads = [NodeLoad(self._evses[e].node_id, start, end, self._evses[e].max_import_kw)
                 for e in sorted(self.unruly) if e in plugged]
        loads += [load for load in self.base_loads if load.start < end and load.end > start]
        kept = [x for x in sessions if x.evse_id not in self.unruly]
        scenario = Scenario(name="live", start=start, interval=s.interval,
                            n_intervals=s.horizon_intervals, tree=self.tree,
                            sessions=tuple(replace(x, arrival=min(x.arrival, start))
                                           for x in kept),
                            loads=tuple(loads), settings=self.plan_settings)
        planned = {x.session_id for x in kept}
        scenario = roll_forward(scenario, max(now, start),
                                {k: v for k, v in soc.items() if k in planned})
        scenario = self.book.context_for(scenario)
        if not scenario.demand_charges:
            return scenario
        self._record_ran(start, scenario.demand_charges)
        return replace(scenario, demand_charges=tuple(
            replace(c, peak_reached_kw=self._reached_kw(c, start))
            for c in scenario.demand_charges))

    def _record_ran(self, until: datetime, charges: Sequence[DemandCharge]) -> None:
        """Keep the net import the plan in force gave each charged node in the intervals
        before ``until`` (EV plan plus base-load forecast; stations stay under their
        profiles, so this bounds what was metered)."""
        schedule = self.schedule
        if schedule is None:
            return
        done = schedule.power_kw.index[schedule.power_kw.index < until]
        if not len(done):
            return
        for node_id in {c.node_id for c in charges}:
            load = schedule.node_load_kw(self.tree, node_id)
            ran = self._ran.setdefault(node_id, {})
            for at in done:
                moment = at.to_pydatetime()
                ran[moment] = float(load[at]) + sum(
                    x.load_kw for x in self.base_loads if x.start <= moment < x.end and (
                        x.node_id == node_id or node_id in self.tree.ancestors(x.node_id)))
            oldest = until - RAN_KEPT
            for moment in [m for m in ran if m < oldest]:
                del ran[moment]

    def _reached_kw(self, charge: DemandCharge, before: datetime) -> float:
        """The highest net import the charge's node ran at in its window before ``before``."""
        ran = self._ran.get(charge.node_id, {})
        seen = [kw for at, kw in ran.items() if charge.start <= at < min(charge.end, before)]
        return max(0.0, charge.peak_reached_kw, *seen)

    def _solve(self, scenario: Scenario) -> tuple[Schedule, str, float]:
        problem, index = build_problem(scenario)
        # nothing to schedule: the LP returns the all-zero plan at once (the MILP path
        # has no empty case)
        method = self.settings.method if scenario.sessions else "lp"
        solution = solve(problem, method=method, time_limit_s=self.settings.time_limit_s)
        schedule = to_schedule(solution, problem, index)
        # "feasible" (a time-limited or gap-limited MILP) is a usable plan, journaled as such
        return schedule, str(solution.status), float(solution.objective)


def planned_kw(schedule: Schedule, evse_id: str, at: datetime) -> float | None:
    """The plan's kW for ``evse_id`` in the interval holding ``at``; None outside it."""
    index = schedule.intervals
    position = int(index.searchsorted(pd.Timestamp(at), side="right")) - 1
    if position < 0 or at >= index[-1] + schedule.interval:
        return None
    return float(schedule.power_kw[evse_id].iloc[position])


def _zero(schedule: Schedule) -> Schedule:
    """The same plan shape with every EVSE at 0 kW."""
    return replace(schedule, power_kw=schedule.power_kw * 0.0,
                   session_power_kw=schedule.session_power_kw * 0.0, status="fallback-zero")
