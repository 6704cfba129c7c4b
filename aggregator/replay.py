"""Replay: a scenario through the live control code on a simulated clock.

The constraint book, the session tracker, the controller (receding-horizon planning, the
cap check and its zero-power fallback, learning from meter readings) and the DSO
adapters' translation code (the VEN's event handling, the IEEE 2030.5 event engine, the
IEC 61850 schedule resolution) are the ones ``gridflex serve`` runs.  Only the clock, the
stations and the EVs are simulated: each step the stations apply the dispatched plan
(the minimum current, the EV's limits and battery as a real station would), meter it, and
the readings go back to the controller and into a ledger (SQLite, per run) whose
settlement, the one ``gridflex settle`` runs, gives the settled energy per session.  Energy
is costed at the prices in force each step (the scenario's and those the DSO sent), with
the planner's pricing rule.  Faults (a DSO link lost, a station offline, a
meter gap, profiles rejected) act where they would live.  A run is deterministic: the
same scenario and seed give the same KPIs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import pandas as pd

from adapters.ocpp.csms import StationEvent, ev_needs
from adapters.ocpp.simulator import SimEv, SimEvse, Version, charging_needs
from aggregator.constraints import ConstraintBook, SafeDefault
from aggregator.controller import Controller, ControllerSettings, planned_kw
from aggregator.dispatch import Delivery
from aggregator.ledger import Ledger, SessionEnergy, settle_sessions
from aggregator.model import (
    DemandCharge,
    Evse,
    Measurand,
    MeterSample,
    OcppVersion,
    Schedule,
    Session,
)
from aggregator.planning import interval_prices
from aggregator.scenario import Scenario
from aggregator.sessions import SessionDefaults, SessionTracker

log = logging.getLogger("gridflex.replay")

Strategy = Literal["uncontrolled", "edf", "llf", "round_robin", "lp", "milp"]
STRATEGIES: tuple[str, ...] = ("uncontrolled", "edf", "llf", "round_robin", "lp", "milp")
FaultKind = Literal["link_loss", "station_offline", "meter_gap", "reject_profiles"]
FAULT_KINDS: tuple[str, ...] = ("link_loss", "station_offline", "meter_gap", "reject_profiles")
DSO_SOURCES = ("openadr", "ieee2030_5", "iec61850")
DR_SOURCES = ("openadr",)  # demand-response events, measured against a baseline
TOLERANCE_KW = 0.01


@dataclass(frozen=True)
class ReplaySettings:
    """How to replay: the station/meter step, the controller's look-ahead and re-plan
    period, the strategy, the seed (session generator and randomised DSO starts)."""

    step: timedelta = timedelta(minutes=5)
    horizon_intervals: int = 32
    period: timedelta = timedelta(minutes=15)
    strategy: Strategy = "lp"
    seed: int = 0
    time_limit_s: float = 30.0
    session_defaults: SessionDefaults = field(default_factory=SessionDefaults)


@dataclass(frozen=True)
class Fault:
    """Something going wrong over ``[start, end)``: ``target`` is the DSO source for
    ``link_loss`` and the EVSE id otherwise."""

    kind: FaultKind
    target: str
    start: datetime
    end: datetime

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True)
class DsoItem:
    """One DSO message, received at ``at``, in its protocol's own terms (see dso_feeds)."""

    at: datetime
    source: str
    payload: Any


@dataclass(frozen=True)
class ReplayScenario:
    """A scenario to replay: the grid, EVSEs, sessions, static limits, prices and base
    load of ``scenario`` over its horizon, plus the DSO timeline and faults."""

    scenario: Scenario
    settings: ReplaySettings = field(default_factory=ReplaySettings)
    dso: tuple[DsoItem, ...] = ()
    feeds: Any = None  # dso_feeds.DsoFeeds: how each protocol's items reach the book
    faults: tuple[Fault, ...] = ()
    safe_defaults: tuple[SafeDefault, ...] = ()
    silent_evses: frozenset[str] = frozenset()  # EVs here never send their needs


@dataclass
class ReplayResult:
    """KPIs of one run and the tables behind them (UTC indexes)."""

    kpis: dict[str, Any]
    nodes: pd.DataFrame  # step x node: load_kw, import_cap_kw, export_cap_kw
    evses: pd.DataFrame  # step x EVSE: power_kw, soc, price_per_kwh
    sessions: pd.DataFrame  # one row per session, plant and settled energy
    plans: pd.DataFrame  # one row per plan

    def write(self, out_dir: Path) -> list[Path]:
        """Parquet files of every table (and the KPIs as one row)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in (("kpis", pd.DataFrame([self.kpis])), ("nodes", self.nodes),
                            ("evses", self.evses), ("sessions", self.sessions),
                            ("plans", self.plans)):
            path = out_dir / f"{name}.parquet"
            frame.to_parquet(path)
            written.append(path)
        return written


@dataclass
class _Ev:
    """A plugged-in EV as the simulated station sees it."""

    session: Session
    evse: Evse
    sim: SimEv
    energy_kwh: float
    target_kwh: float
    floor_kwh: float
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    power_kw: float = 0.0


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class _Stations:
    """The simulated stations: take the dispatched plan and answer like stations would."""

    def __init__(self, faults: Sequence[Fault], clock: _Clock) -> None:
        self.faults = faults
        self.clock = clock
        self.schedule: Schedule | None = None

    def fault(self, kind: str, evse_id: str, at: datetime) -> bool:
        return any(f.kind == kind and f.target == evse_id and f.active(at) for f in self.faults)

    async def __call__(self, schedule: Schedule) -> list[Delivery]:
        now = self.clock()
        self.schedule = schedule
        answers = []
        for evse_id in schedule.power_kw.columns:
            if self.fault("station_offline", evse_id, now):
                status = "NotConnected"
            elif self.fault("reject_profiles", evse_id, now):
                status = "Rejected"
            else:
                status = "Accepted"
            answers.append(Delivery(evse_id, evse_id, status, status == "Accepted"))
        return answers


def replay(run: ReplayScenario) -> ReplayResult:
    """Replay ``run`` (blocking); see the module docstring.  Under a running event loop (a
    Jupyter kernel) the replay runs on its own loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(run))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridflex-replay") as pool:
        return pool.submit(asyncio.run, replay_async(run)).result()


async def replay_async(run: ReplayScenario) -> ReplayResult:
    """Replay ``run`` on the running event loop."""
    scenario, settings = run.scenario, run.settings
    if settings.step <= timedelta(0) or scenario.interval % settings.step:
        raise ValueError(f"step: must divide the interval {scenario.interval}, "
                         f"got {settings.step}")
    tree = scenario.tree
    clock = _Clock(scenario.start)
    book = ConstraintBook(started_at=scenario.start, defaults=run.safe_defaults)
    for source in sorted({c.source for c in scenario.constraints}):  # ratings, fixed limits
        book.publish(source, "scenario", [c for c in scenario.constraints
                                          if c.source == source], scenario.start)
    if scenario.prices:
        book.publish_prices("scenario", "static", scenario.prices, scenario.start)
    if scenario.demand_charges:
        book.publish_demand_charges("scenario", "static", scenario.demand_charges,
                                    scenario.start)
    evses = {e.evse_id: e for e in tree.evses}
    tracker = SessionTracker({(e.evse_id, 1): e for e in tree.evses}, settings.session_defaults)
    stations = _Stations(run.faults, clock)
    controlled = settings.strategy != "uncontrolled"
    controller = Controller(
        tree, book, tracker, stations, clock=clock,
        settings=ControllerSettings(
            interval=scenario.interval, horizon_intervals=settings.horizon_intervals,
            period_s=settings.period.total_seconds(), method=_method(settings.strategy),
            time_limit_s=settings.time_limit_s),
        plan_settings=scenario.settings, base_loads=scenario.loads)
    feeds = run.feeds
    with tempfile.TemporaryDirectory(prefix="gridflex-replay-") as scratch:
        if feeds is not None:
            feeds.start(book, clock, Path(scratch), controller)
        ledger = Ledger(f"sqlite:///{Path(scratch) / 'ledger.db'}")
        ledger.migrate()
        try:
            return await _loop(run, clock, book, controller, stations, evses, controlled,
                               feeds, ledger)
        finally:
            ledger.engine.dispose()


def _method(strategy: str) -> Any:
    return "lp" if strategy == "uncontrolled" else strategy


async def _loop(run: ReplayScenario, clock: _Clock, book: ConstraintBook,
                controller: Controller, stations: _Stations, evses: dict[str, Evse],
                controlled: bool, feeds: Any, ledger: Ledger) -> ReplayResult:
    scenario, settings = run.scenario, run.settings
    tree = scenario.tree
    step = settings.step
    step_h = step.total_seconds() / 3600.0
    pending = sorted(run.dso, key=lambda item: item.at)
    waiting = sorted(scenario.sessions, key=lambda s: (s.arrival, s.session_id))
    plugged: dict[str, _Ev] = {}
    done: list[_Ev] = []
    lost: set[str] = set()
    node_rows: list[dict[str, Any]] = []
    evse_rows: list[dict[str, Any]] = []
    last_plan: datetime | None = None
    node_ids = [n.node_id for n in tree.nodes]
    below = {n: [e.evse_id for e in tree.evses if n in tree.ancestors(e.node_id)]
             for n in node_ids}
    violations = 0
    unruly: set[str] = set()  # EVSEs the controller saw not following, at any time
    metered: list[MeterSample] = []  # what the stations send, for the ledger
    charged: set[DemandCharge] = set()  # demand charges in force at some step
    t = scenario.start
    while t < scenario.end:
        clock.now = t
        # -- DSO links and messages ------------------------------------------------------
        for source in DSO_SOURCES:
            down = any(f.kind == "link_loss" and f.target == source and f.active(t)
                       for f in run.faults)
            if down and source not in lost:
                lost.add(source)
                book.link_lost(source, t, "replay fault: link lost")
            elif not down and source in lost:
                lost.discard(source)
                book.link_up(source, t)
        due = [item for item in pending if item.at <= t and item.source not in lost]
        for item in due:
            pending.remove(item)
        if feeds is not None:
            await feeds.deliver(due, t, lost)
        # -- EVs arrive and leave ----------------------------------------------------------
        for ev in [ev for ev in plugged.values() if ev.session.departure <= t]:
            del plugged[ev.evse.evse_id]
            done.append(ev)
            metered.extend(_readings(ev, t))  # the final reading with the transaction's end
            controller.on_station_event(StationEvent("ended", ev.evse.evse_id, 1,
                                                     f"tx-{ev.session.session_id}", t))
        while waiting and waiting[0].arrival <= t:
            session = waiting.pop(0)
            if session.evse_id in plugged or session.departure <= t:
                log.warning("session %s skipped: its EVSE is busy or it already left",
                            session.session_id)
                continue
            ev = _plug(session, evses[session.evse_id])
            plugged[session.evse_id] = ev
            tx = f"tx-{session.session_id}"
            controller.on_station_event(StationEvent("started", session.evse_id, 1, tx, t))
            if session.evse_id not in run.silent_evses and \
                    ev.evse.ocpp_version is not OcppVersion.V16:
                version = cast(Version, ev.evse.ocpp_version.value)
                needs = ev_needs(charging_needs(ev.sim, _sim_evse(ev.evse), version), t)
                controller.on_station_event(StationEvent("needs", session.evse_id, 1, tx, t,
                                                         needs=needs))
        # -- control ---------------------------------------------------------------------
        if controlled:
            if last_plan is None or t - last_plan >= settings.period:
                controller.request("periodic", "timer")
            if controller.pending_triggers:
                await controller.replan()
                last_plan = t
            unruly.update(controller.unruly)
        # -- the stations and EVs over one step ----------------------------------------------
        samples: list[MeterSample] = []
        imp_price, exp_price = (float(p[0]) for p in interval_prices(
            book.prices(t, t + step), scenario.settings, t, step, 1))
        charged.update(book.demand_charges(t, t + step))
        for evse_id, ev in plugged.items():
            ev.power_kw = _power_kw(ev, _limit_kw(ev, stations, controlled, t), step_h)
            if not stations.fault("meter_gap", evse_id, t):
                samples.extend(_readings(ev, t))  # registers so far, power from now on
            _integrate(ev, step_h)
        if samples:
            controller.on_samples(samples)
            metered.extend(samples)
        load = {e: (plugged[e].power_kw if e in plugged else 0.0) for e in evses}
        for node in node_ids:
            base = sum(x.load_kw for x in scenario.loads if x.start <= t < x.end
                       and (x.node_id == node or node in tree.ancestors(x.node_id)))
            flow = base + sum(load[e] for e in below[node])
            binding = {r.direction: r for r in book.why(node, t) if r.binding}
            imp = binding["import"].limit_kw if "import" in binding else None
            exp = binding["export"].limit_kw if "export" in binding else None
            broke = (imp is not None and flow > imp + TOLERANCE_KW) or (
                exp is not None and -flow > exp + TOLERANCE_KW)
            violations += broke
            node_rows.append({"at": t, "node": node, "load_kw": flow, "import_cap_kw": imp,
                              "export_cap_kw": exp, "violation": broke,
                              "import_cap_source": binding["import"].constraint.source
                              if "import" in binding else None})
        for evse_id, ev in plugged.items():
            evse_rows.append({"at": t, "evse": evse_id, "session": ev.session.session_id,
                              "power_kw": ev.power_kw,
                              "soc": ev.energy_kwh / ev.session.battery_capacity_kwh,
                              "price_per_kwh": imp_price if ev.power_kw >= 0 else exp_price})
        t += step
    for ev in plugged.values():
        metered.extend(_readings(ev, t))  # the run ends: the stations' last readings
    done.extend(plugged.values())
    ledger.add_samples(metered)
    settled = {(s.evse_id, s.transaction_id): s for s in settle_sessions(
        ledger, scenario.start, t + step, max_gap_s=2 * step.total_seconds())}
    return _result(run, done, node_rows, evse_rows, controller, violations, unruly, settled,
                   charged)


def _plug(session: Session, evse: Evse) -> _Ev:
    capacity = session.battery_capacity_kwh
    energy, target = session.energy_initial_kwh, session.energy_target_kwh
    discharge = session.max_discharge_kw if evse.can_discharge else 0.0
    # the EV takes energy up to its ceiling (its target unless it said it takes more)
    sim = SimEv(battery_capacity_kwh=capacity, soc=session.soc_initial,
                departure=session.departure, max_charge_kw=session.max_charge_kw,
                energy_requested_kwh=session.energy_ceiling_kwh - energy,
                max_discharge_kw=discharge,
                min_soc=session.min_soc_v2g if discharge else 0.0)
    return _Ev(session, evse, sim, energy, target, session.min_soc_v2g * capacity)


def _sim_evse(evse: Evse) -> SimEvse:
    return SimEvse(evse.max_import_kw, evse.max_export_kw, evse.phases, evse.voltage_v)


def _limit_kw(ev: _Ev, stations: _Stations, controlled: bool, at: datetime) -> float:
    """What the station lets the EV do now: the plan (0, or at least the minimum current),
    or, uncontrolled (no control, station offline, profile rejected), full power."""
    evse_id = ev.evse.evse_id
    if not controlled or stations.schedule is None or \
            stations.fault("station_offline", evse_id, at) or \
            stations.fault("reject_profiles", evse_id, at):
        return ev.evse.max_import_kw  # no profile in force: the station gives what it can
    schedule = stations.schedule
    if evse_id not in schedule.power_kw.columns:
        return 0.0
    planned = planned_kw(schedule, evse_id, at)
    if planned is None:
        return 0.0  # past the plan's horizon: the profile has ended
    if 0.0 < planned < ev.evse.min_power_kw:
        return 0.0
    return planned


def _power_kw(ev: _Ev, limit_kw: float, step_h: float) -> float:
    """What the EV draws (+) or gives (-) for one step within its and the EVSE's limits
    and what its battery can take or give."""
    s = ev.session
    if limit_kw >= 0.0:
        room = max(ev.target_kwh - ev.energy_kwh, 0.0)
        power = min(limit_kw, s.max_charge_kw, ev.evse.max_import_kw,
                    room / (step_h * s.charge_efficiency))
    else:
        room = max(ev.energy_kwh - ev.floor_kwh, 0.0)
        power = -min(-limit_kw, ev.sim.max_discharge_kw, ev.evse.max_export_kw,
                     room * s.discharge_efficiency / step_h)
    return power if abs(power) > 1e-9 else 0.0


def _integrate(ev: _Ev, step_h: float) -> None:
    """One step at ``ev.power_kw``: battery energy and the import and export registers."""
    s = ev.session
    if ev.power_kw >= 0.0:
        ev.energy_kwh += ev.power_kw * step_h * s.charge_efficiency
        ev.import_kwh += ev.power_kw * step_h
    else:
        ev.energy_kwh += ev.power_kw * step_h / s.discharge_efficiency
        ev.export_kwh += -ev.power_kw * step_h


def _readings(ev: _Ev, at: datetime) -> list[MeterSample]:
    """What the station meters at the end of a step (registers in Wh, power in W)."""
    evse_id, tx = ev.evse.evse_id, f"tx-{ev.session.session_id}"
    values = [(Measurand.ENERGY_IMPORT, math.floor(ev.import_kwh * 1000.0 + 1e-6)),
              (Measurand.ENERGY_EXPORT, math.floor(ev.export_kwh * 1000.0 + 1e-6)),
              (Measurand.POWER_IMPORT, max(ev.power_kw, 0.0) * 1000.0),
              (Measurand.POWER_EXPORT, max(-ev.power_kw, 0.0) * 1000.0)]
    if ev.evse.ocpp_version is not OcppVersion.V16:
        values.append((Measurand.SOC, 100.0 * ev.energy_kwh / ev.session.battery_capacity_kwh))
    return [MeterSample(station_id=evse_id, evse_number=1, transaction_id=tx, measured_at=at,
                        measurand=m, value=float(v), received_at=at, evse_id=evse_id)
            for m, v in values]


def _result(run: ReplayScenario, evs: Sequence[_Ev], node_rows: list[dict[str, Any]],
            evse_rows: list[dict[str, Any]], controller: Controller,
            violations: int, unruly: set[str],
            settled: dict[tuple[str | None, str | None], SessionEnergy],
            charged: set[DemandCharge]) -> ReplayResult:
    scenario, settings = run.scenario, run.settings
    nodes = pd.DataFrame(node_rows)
    evse_frame = pd.DataFrame(evse_rows, columns=["at", "evse", "session", "power_kw", "soc",
                                                  "price_per_kwh"])
    step_h = settings.step.total_seconds() / 3600.0
    cost = float((evse_frame["price_per_kwh"] * evse_frame["power_kw"]).sum() * step_h)

    def settlement(ev: _Ev) -> dict[str, Any]:
        found = settled.get((ev.evse.evse_id, f"tx-{ev.session.session_id}"))
        return {"settled_import_kwh": found.imported_kwh if found else 0.0,
                "settled_export_kwh": found.exported_kwh if found else 0.0,
                "meter_gaps": found.gaps if found else 0}

    sessions = pd.DataFrame([{
        "session": ev.session.session_id, "evse": ev.evse.evse_id,
        "arrival": ev.session.arrival, "departure": ev.session.departure,
        "requested_kwh": ev.target_kwh - ev.session.soc_initial * ev.session.battery_capacity_kwh,
        "delivered_kwh": max(0.0, min(ev.energy_kwh, ev.target_kwh)
                             - ev.session.soc_initial * ev.session.battery_capacity_kwh),
        "unmet_kwh": max(0.0, ev.target_kwh - ev.energy_kwh),
        "imported_kwh": ev.import_kwh, "exported_kwh": ev.export_kwh,
        "soc_end": ev.energy_kwh / ev.session.battery_capacity_kwh, **settlement(ev)}
        for ev in evs],
        columns=["session", "evse", "arrival", "departure", "requested_kwh", "delivered_kwh",
                 "unmet_kwh", "imported_kwh", "exported_kwh", "soc_end", "settled_import_kwh",
                 "settled_export_kwh", "meter_gaps"])
    plans = pd.DataFrame([{
        "planned_at": p.planned_at, "status": p.status, "fallback": p.fallback,
        "solve_s": p.solve_s, "sessions": p.sessions,
        "triggers": ", ".join(sorted({t.kind for t in p.triggers}))} for p in controller.plans],
        columns=["planned_at", "status", "fallback", "solve_s", "sessions", "triggers"])
    demand_cost = _demand_charge_cost(nodes, charged)
    requested = float(sessions["requested_kwh"].sum())
    delivered = float(sessions["delivered_kwh"].sum())
    peaks = nodes.groupby("node")["load_kw"].max() if len(nodes) else pd.Series(dtype=float)
    kpis: dict[str, Any] = {
        "scenario": scenario.name, "strategy": settings.strategy, "seed": settings.seed,
        "sessions": len(sessions), "energy_requested_kwh": round(requested, 3),
        "energy_delivered_kwh": round(delivered, 3),
        "energy_delivered_pct": round(100.0 * delivered / requested, 2) if requested else 100.0,
        "unmet_kwh": round(float(sessions["unmet_kwh"].sum()), 3),
        "imported_kwh": round(float(sessions["imported_kwh"].sum()), 3),
        "discharged_kwh": round(float(sessions["exported_kwh"].sum()), 3),
        "settled_import_kwh": round(float(sessions["settled_import_kwh"].sum()), 3),
        "settled_export_kwh": round(float(sessions["settled_export_kwh"].sum()), 3),
        "meter_gaps": int(sessions["meter_gaps"].sum()),
        "cost": round(cost, 3), "demand_charge_cost": round(demand_cost, 3),
        "total_cost": round(cost + demand_cost, 3), "cap_violations": int(violations),
        "plans": len(plans), "fallback_plans": int((plans["fallback"] != "").sum()),
        "solve_p50_s": round(float(plans["solve_s"].median()), 4) if len(plans) else 0.0,
        "solve_max_s": round(float(plans["solve_s"].max()), 4) if len(plans) else 0.0,
        "uncontrolled_evses": ",".join(sorted(unruly)),  # seen not following
        **{f"peak_kw[{node}]": round(float(kw), 3) for node, kw in peaks.items()},
    }
    kpis.update(_dr_delivered(run, nodes))
    return ReplayResult(kpis, nodes, evse_frame, sessions, plans)


def _demand_charge_cost(nodes: pd.DataFrame, charged: set[DemandCharge]) -> float:
    """Each demand charge on the highest metered net import of its node in its window."""
    total = 0.0
    for charge in charged:
        rows = nodes[(nodes["node"] == charge.node_id) & (nodes["at"] >= charge.start)
                     & (nodes["at"] < charge.end)]
        if len(rows):
            total += charge.price_per_kw * max(0.0, float(rows["load_kw"].max()))
    return total


def _dr_delivered(run: ReplayScenario, nodes: pd.DataFrame) -> dict[str, float]:
    """Energy (kWh) below each node's meter-before baseline while a demand-response
    event's import cap bound it: what the fleet delivered against the baseline.
    Operating envelopes and schedules (2030.5, 61850, ratings) are limits, not events."""
    from aggregator.baselines import delivered_flexibility_kw, meter_before

    if nodes.empty:
        return {"dr_delivered_kwh": 0.0}
    step_h = run.settings.step.total_seconds() / 3600.0
    total = 0.0
    for window in _dr_windows(nodes):
        node, start, end = window
        load = nodes[nodes["node"] == node].set_index("at")["load_kw"]
        load.index = pd.DatetimeIndex(load.index)
        try:
            baseline = meter_before(load, start, end)
        except ValueError:
            continue  # no metered load before the event: no baseline
        during = (load.index >= pd.Timestamp(start)) & (load.index < pd.Timestamp(end))
        flex = delivered_flexibility_kw(load[during], baseline)
        total += float(flex.sum()) * step_h
    return {"dr_delivered_kwh": round(total, 3)}


def _dr_windows(nodes: pd.DataFrame) -> list[tuple[str, datetime, datetime]]:
    """Stretches where a node's binding import cap came from a DR event source."""
    found: list[tuple[str, datetime, datetime]] = []
    for node, rows in nodes.groupby("node"):
        source = rows.set_index("at")["import_cap_source"]
        start: datetime | None = None
        for at, name in zip(source.index, source.to_numpy(), strict=True):
            moment = pd.Timestamp(at).to_pydatetime()
            if name in DR_SOURCES and start is None:
                start = moment
            elif name not in DR_SOURCES and start is not None:
                found.append((str(node), start, moment))
                start = None
        if start is not None:
            found.append((str(node), start, pd.Timestamp(source.index[-1]).to_pydatetime()))
    return found


def with_strategy(run: ReplayScenario, strategy: Strategy) -> ReplayScenario:
    """The same run under another strategy."""
    return replace(run, settings=replace(run.settings, strategy=strategy))
