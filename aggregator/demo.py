"""``gridflex demo``: the whole mission live on 127.0.0.1, on an accelerated clock.

Three DSO peers (a real openleadr VTN, an IEC 61850 substation on the ``iec61850``
server, a loopback IEEE 2030.5 server), gridflex's service (book, controller, CSMS,
ledger, API) and 20 simulated OCPP stations (1.6, 2.0.1, 2.1 with V2G) with EVs arriving
through an evening.  The DSO announces an evening-peak cap and price; gridflex re-plans,
the stations follow, V2G cars discharge, the ledger settles.  Every check is measured
from what the stations really did, against the caps in force in the book at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.ocpp.simulator import SimEv, SimEvse, SimStation
from aggregator.clock import ScaledClock
from aggregator.constraints import SafeDefault
from aggregator.controller import ControllerSettings, Method
from aggregator.ledger import Ledger, settle_sessions
from aggregator.measure import free_port, percentile
from aggregator.model import Evse, GridNode, GridTree, NodeKind, OcppVersion
from aggregator.plans import PlanRecord
from aggregator.scenario import PlanSettings
from aggregator.service import Service
from aggregator.service_config import ServiceConfig
from aggregator.sessions import SessionDefaults

log = logging.getLogger("gridflex.demo")

PROGRAM = "oadr://dso-north/evening-peak"
TOLERANCE_KW = 0.1  # profile rounding (0.1 A / 0.1 W steps) stays below this
VERSIONS = {"1.6": OcppVersion.V16, "2.0.1": OcppVersion.V201, "2.1": OcppVersion.V21}


@dataclass(frozen=True)
class DemoSettings:
    """The evening to play and how fast."""

    out_dir: Path = Path("out/demo")
    speed: float = 300.0  # simulated seconds per real second
    hours: float = 6.0  # from 16:00 simulated time
    step: timedelta = timedelta(minutes=5)  # stations meter and the checks sample
    n_stations: int = 20
    seed: int = 7
    method: Method = "milp"  # the AC stations' 6 A minimum matters at this scale


@dataclass
class Sample:
    """One check: what the stations drew below each node against the caps in force."""

    at: datetime
    load_kw: dict[str, float]
    import_cap_kw: dict[str, float | None]
    export_cap_kw: dict[str, float | None]


@dataclass
class DemoRun:
    """What the demo measured."""

    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    plans: int = 0
    mirror_posts: int = 0  # MirrorUsagePoint / MirrorMeterReading POSTs the 2030.5 DSO got


def _fleet(settings: DemoSettings, origin: datetime) -> tuple[GridTree, list[dict[str, Any]]]:
    """Two sites of ten single-EVSE stations under one feeder, and the EVs that come."""
    rng = random.Random(settings.seed)
    nodes = (GridNode("dso-north", NodeKind.AREA), GridNode("feeder-7", NodeKind.FEEDER,
                                                            "dso-north"),
             GridNode("office", NodeKind.SITE, "feeder-7"),
             GridNode("depot", NodeKind.SITE, "feeder-7"))
    pattern = ("1.6", "2.0.1", "2.1", "1.6", "2.0.1", "2.1", "1.6", "2.0.1", "2.1", "2.1")
    evses, plan = [], []
    for i in range(settings.n_stations):
        site = "office" if i < settings.n_stations // 2 else "depot"
        version = pattern[i % len(pattern)]
        v2g = version == "2.1" and i % 3 != 1
        evse = Evse(f"{site}-{i + 1:02d}", site, max_import_kw=11.0,
                    max_export_kw=11.0 if v2g else 0.0, v2g_capable=v2g,
                    ocpp_version=VERSIONS[version])
        evses.append(evse)
        arrival = origin + timedelta(minutes=rng.randint(5, 90))
        departure = origin + timedelta(hours=rng.uniform(min(4.75, settings.hours - 0.5),
                                                         settings.hours - 0.1))
        capacity = rng.choice((50.0, 60.0, 77.0)) if v2g else rng.choice((40.0, 58.0, 64.0))
        soc = rng.uniform(0.7, 0.85) if v2g else rng.uniform(0.2, 0.5)
        ev = SimEv(battery_capacity_kwh=capacity, soc=soc, departure=departure,
                   max_charge_kw=11.0, energy_requested_kwh=round(rng.uniform(6.0, 16.0), 1),
                   max_discharge_kw=11.0 if v2g else 0.0, min_soc=0.4 if v2g else 0.0)
        plan.append({"station_id": f"cs-{i + 1:02d}", "version": version, "evse": evse,
                     "arrival": arrival, "ev": ev})
    return GridTree(nodes=nodes, evses=tuple(evses)), plan


async def run_demo(settings: DemoSettings, progress: Callable[[str], None] = print) -> dict[
        str, Any]:
    """Play the evening; returns the summary (also written as summary.json)."""
    from adapters.iec61850.config import AdapterConfig
    from adapters.iec61850.substation import Substation
    from adapters.ieee2030_5.config import ClientConfig
    from adapters.ieee2030_5.loopback import LoopbackServer
    from adapters.ocpp.csms import StationConfig
    from adapters.openadr.config import VenConfig
    from adapters.openadr.vtn import Interval, LoopbackVtn

    began = time.monotonic()
    logging.getLogger("openleadr").setLevel(logging.WARNING)  # it sets INFO on import
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ledger_file = out / "ledger.db"
    for stale in out.glob("ledger.db*"):
        stale.unlink()
    day = (datetime.now(UTC) + timedelta(days=1)).date()
    origin = datetime(day.year, day.month, day.day, 16, tzinfo=UTC)
    clock = ScaledClock(origin, settings.speed, held=True)
    end = origin + timedelta(hours=settings.hours)
    tree, fleet = _fleet(settings, origin)
    progress(f"gridflex demo: {len(fleet)} stations, simulated {origin:%Y-%m-%d %H:%M} to "
             f"{end:%H:%M} UTC at {settings.speed:g}x on 127.0.0.1")

    # -- the DSO side -------------------------------------------------------------------
    vtn = LoopbackVtn(port=free_port())
    with contextlib.redirect_stdout(io.StringIO()):  # openleadr prints a banner
        await vtn.start()
    substation = Substation(limit_w=55_000.0)
    await substation.start()
    await substation.set_limit(55_000.0, origin)
    dso2 = LoopbackServer(clock=clock)
    await dso2.start()
    sep2_settings = dso2.client_settings({"office": "office"}, poll_rate_s=1, min_poll_s=1,
                                         post_rate_s=2)  # the office's metering, mirrored
    dso2.set_import_limit("office", origin, int(settings.hours * 3600), 45_000.0)
    dso2.set_export_limit("office", origin, int(settings.hours * 3600), 15_000.0)
    interval_real_s = clock.real_s(timedelta(minutes=15))
    config = ServiceConfig(
        tree=tree,
        stations=tuple(StationConfig(f["station_id"], f"pw-{f['station_id']}",
                                     {1: f["evse"].evse_id},
                                     "W" if f["version"] == "2.1" else "A") for f in fleet),
        station_versions={f["station_id"]: f["evse"].ocpp_version for f in fleet},
        ledger_url=f"sqlite:///{ledger_file}", api_port=0, ocpp_port=0,
        controller=ControllerSettings(horizon_intervals=32, debounce_s=0.1,
                                      period_s=interval_real_s, method=settings.method,
                                      time_limit_s=5.0),
        plan=PlanSettings(default_import_price_per_kwh=0.20),
        session_defaults=SessionDefaults(dwell=timedelta(hours=4), energy_kwh=12.0),
        safe_defaults=(SafeDefault("ieee2030_5", "office", import_max_kw=25.0),
                       SafeDefault("iec61850", "depot", import_max_kw=25.0),
                       SafeDefault("openadr", "feeder-7", import_max_kw=60.0)),
        openadr=VenConfig.from_mapping({
            "vtn_url": vtn.url, "ven_name": "gridflex-demo",
            "state_file": str(out / "ven-state.json"), "poll_interval_s": 1,
            "default_nodes": ["feeder-7"],
            "programs": {PROGRAM: {"mandatory": True,
                                   "simple_levels_kw": {"1": 90, "2": 50, "3": 0},
                                   "base_import_price_per_kwh": 0.20,
                                   "export_price_ratio": 1.0}}}),
        ieee2030_5=ClientConfig.from_mapping(sep2_settings),
        iec61850=AdapterConfig((substation.ied_config(
            node_id="depot", poll_interval_s=1.0, ttl_s=4 * 3600.0,
            request_timeout_s=2.0),)))
    for stale in out.glob("ven-state.json"):
        stale.unlink()
    service = Service(config, clock=clock)
    await service.start()
    run = DemoRun()
    issued: dict[str, float] = {}

    def on_plan(plan: PlanRecord) -> None:
        run.plans += 1
        for trigger in plan.triggers:
            for event_id, sent in list(issued.items()):
                if trigger.kind in ("constraint", "prices") and event_id in trigger.detail:
                    run.latencies_s.append(time.monotonic() - sent)
                    del issued[event_id]

    service.controller.on_plan(on_plan)
    stations = [SimStation(f["station_id"], f["version"], f"pw-{f['station_id']}",
                           {1: SimEvse(11.0, f["evse"].max_export_kw)}, clock=clock)
                for f in fleet]
    url = f"ws://127.0.0.1:{service.ocpp_port}"
    try:
        await asyncio.gather(*(s.connect(url) for s in stations))
        ven = service.adapters["openadr"]
        deadline = time.monotonic() + 20
        while ven.client.ven_id is None or not service.book.link_is_up("ieee2030_5") or \
                not service.book.link_is_up("iec61850"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"DSO links did not come up: {service.book.links()}")
            await asyncio.sleep(0.05)
        progress(f"  DSO links up (OpenADR VEN {ven.client.ven_id}, IEEE 2030.5, "
                 f"IEC 61850); {len(stations)} stations connected; operator API on "
                 f"http://127.0.0.1:{service.api_port}/health")
        clock.start()
        await _play(settings, clock, service, stations, fleet, vtn, substation, run, issued,
                    Interval, progress)
        for station in stations:  # the evening ends: close the transactions still running
            if station.state[1].ev is not None:
                await station.unplug(1)
    finally:
        for station in stations:
            await station.close()
        await service.stop()
        run.mirror_posts = sum(1 for seen in dso2.requests
                               if seen.method == "POST" and seen.path.startswith("/mup"))
        await dso2.stop()
        await substation.stop()
        await vtn.stop()
    return _summarise(settings, origin, clock(), tree, fleet, stations, run, ledger_file,
                      time.monotonic() - began)


async def _play(settings: DemoSettings, clock: ScaledClock, service: Service,
                stations: list[SimStation], fleet: list[dict[str, Any]], vtn: Any,
                substation: Any, run: DemoRun, issued: dict[str, float], interval: Any,
                progress: Callable[[str], None]) -> None:
    """The evening, one metering step at a time: arrivals, departures, DSO moves, checks."""
    origin = clock.origin
    end = origin + timedelta(hours=settings.hours)
    peak = (origin + timedelta(hours=1), origin + timedelta(hours=4))
    moves = [
        (origin + timedelta(minutes=30), "OpenADR: evening-peak event 17:00-20:00, feeder "
         "cap level 2 (50 kW) and a 0.45/kWh price"),
        (origin + timedelta(hours=3), "OpenADR: a second, milder event 20:00-20:30 "
         "(level 1, 90 kW)"),
        (origin + timedelta(hours=3, minutes=30), "IEC 61850: substation raises the depot "
         "limit to 75 kW"),
    ]
    ven_id = service.adapters["openadr"].client.ven_id
    step = settings.step
    at = origin
    while at < end:
        await clock.sleep_until(at)
        now = clock()
        while moves and moves[0][0] <= now:
            _, what = moves.pop(0)
            progress(f"  {now:%H:%M} {what}")
            if what.startswith("OpenADR: a second"):
                issued["late-peak"] = time.monotonic()
                vtn.add_event(ven_id, "late-peak", "SIMPLE", "level",
                              [interval(peak[1], timedelta(minutes=30), 1.0)],
                              market_context=PROGRAM)
            elif what.startswith("OpenADR"):
                span = peak[1] - peak[0]
                issued["evening-cap"] = time.monotonic()
                vtn.add_event(ven_id, "evening-cap", "SIMPLE", "level",
                              [interval(peak[0], span, 2.0)], market_context=PROGRAM)
                issued["evening-price"] = time.monotonic()
                vtn.add_event(ven_id, "evening-price", "ELECTRICITY_PRICE", "price",
                              [interval(peak[0], span, 0.45)], market_context=PROGRAM)
            else:
                await substation.set_limit(75_000.0, now)
        for station, f in zip(stations, fleet, strict=True):
            state = station.state[1]
            if state.ev is None and state.transaction_id is None and \
                    f["arrival"] <= now < f["ev"].departure and not f.get("done"):
                await station.plug_in(1, f["ev"], f"TAG-{f['station_id']}")
            elif state.ev is not None and now >= f["ev"].departure:
                f["unmet_kwh"] = max(0.0, f["ev"].requested_kwh - _charged_kwh(state, f["ev"]))
                f["done"] = True
                await station.unplug(1)
        await asyncio.gather(*(s.step() for s in stations))
        _check(service, stations, fleet, now, run)
        if (now - origin) % timedelta(minutes=30) < step:
            last = run.samples[-1]
            loads = "  ".join(f"{n} {last.load_kw[n]:5.1f}/{_cap_text(last.import_cap_kw[n])}"
                              for n in ("feeder-7", "office", "depot"))
            plugged = sum(1 for s in stations if s.state[1].ev is not None)
            progress(f"  {now:%H:%M} kW load/cap: {loads}; {plugged} EVs plugged, "
                     f"{run.plans} plans, {len(run.violations)} violations")
        at += step


def _charged_kwh(state: Any, ev: SimEv) -> float:
    """Battery energy the EV gained since it arrived (discharge counted back)."""
    soc = state.soc if state.soc is not None else ev.soc
    return (soc - ev.soc) * ev.battery_capacity_kwh


def _cap_text(cap: float | None) -> str:
    return "none" if cap is None else f"{cap:g}"


def _check(service: Service, stations: list[SimStation], fleet: list[dict[str, Any]],
           now: datetime, run: DemoRun) -> None:
    """What the stations draw now below each node against the caps the book holds now."""
    tree = service.config.tree
    applied = {f["evse"].evse_id: s.state[1].applied_kw
               for s, f in zip(stations, fleet, strict=True)}
    sample = Sample(now, {}, {}, {})
    for node in ("feeder-7", "office", "depot"):
        load = sum(kw for evse_id, kw in applied.items()
                   if node in tree.ancestors(tree.evse(evse_id).node_id))
        sample.load_kw[node] = load
        for direction, caps in (("import", sample.import_cap_kw),
                                ("export", sample.export_cap_kw)):
            cap = service.book.limit_kw(node, direction, now)  # type: ignore[arg-type]
            caps[node] = cap
            flow = load if direction == "import" else -load
            if cap is not None and flow > cap + TOLERANCE_KW:
                run.violations.append(f"{now:%H:%M} {node} {direction} {flow:.1f} kW > "
                                      f"{cap:g} kW")
    run.samples.append(sample)


def _summarise(settings: DemoSettings, origin: datetime, ended: datetime, tree: GridTree,
               fleet: list[dict[str, Any]], stations: list[SimStation], run: DemoRun,
               ledger_file: Path, wall_s: float) -> dict[str, Any]:
    ledger = Ledger(f"sqlite:///{ledger_file}")
    settled = settle_sessions(ledger, origin - timedelta(hours=1), ended + timedelta(hours=1))
    for f, station in zip(fleet, stations, strict=True):
        if "unmet_kwh" not in f and station.state[1].soc is not None:
            f["unmet_kwh"] = max(0.0, f["ev"].requested_kwh - _charged_kwh(station.state[1],
                                                                            f["ev"]))
    png = settings.out_dir / "demo_report.png"
    _plot(run, png)
    summary = {
        "stations": len(stations),
        "sessions": len(settled),
        "energy_delivered_kwh": round(sum(r.imported_kwh for r in settled), 3),
        "discharged_kwh_settled": round(sum(r.exported_kwh for r in settled), 3),
        "unmet_kwh": round(sum(f.get("unmet_kwh", 0.0) for f in fleet), 3),
        "cap_violations": len(run.violations),
        "plans": run.plans,
        "event_to_profiles_p50_s": round(percentile(run.latencies_s, 50), 3),
        "event_to_profiles_p99_s": round(percentile(run.latencies_s, 99), 3),
        "event_latency_samples": len(run.latencies_s),
        "flagged_sessions": sum(1 for r in settled if r.resets or r.gaps),
        "meter_samples": ledger.count(),
        "ieee2030_5_mirror_posts": run.mirror_posts,
        "wall_s": round(wall_s, 1),
        "report_png": str(png),
        "ledger": str(ledger_file),
        "violations": run.violations[:10],
        "evs": [{"station_id": f["station_id"], "ocpp": f["version"],
                 "v2g": f["ev"].max_discharge_kw > 0, "arrival": f"{f['arrival']:%H:%M}",
                 "departure": f"{f['ev'].departure:%H:%M}",
                 "requested_kwh": round(f["ev"].requested_kwh, 2),
                 "unmet_kwh": round(f.get("unmet_kwh", 0.0), 2)} for f in fleet],
    }
    ledger.engine.dispose()
    (settings.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(run: DemoRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = ("feeder-7", "office", "depot")
    figure, axes = plt.subplots(len(nodes), 1, figsize=(10, 8), sharex=True)
    times = [s.at for s in run.samples]
    for axis, node in zip(axes, nodes, strict=True):
        axis.step(times, [s.load_kw[node] for s in run.samples], where="post",
                  label="EV load (measured at the stations)")
        axis.step(times, [s.import_cap_kw[node] if s.import_cap_kw[node] is not None
                          else float("nan") for s in run.samples], where="post",
                  color="red", linestyle="--", label="import cap in force")
        if any(s.export_cap_kw[node] is not None for s in run.samples):
            axis.step(times, [-(s.export_cap_kw[node] or 0.0) if s.export_cap_kw[node]
                              is not None else float("nan") for s in run.samples],
                      where="post", color="purple", linestyle=":", label="export cap")
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set_ylabel(f"{node} kW")
        axis.legend(loc="upper right", fontsize=7)
    axes[0].set_title("gridflex demo: node load against DSO caps (UTC, simulated)")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-demo table."""
    rows = [("stations / sessions", f"{summary['stations']} / {summary['sessions']}"),
            ("energy delivered (settled import)", f"{summary['energy_delivered_kwh']:.1f} kWh"),
            ("unmet energy", f"{summary['unmet_kwh']:.1f} kWh"),
            ("discharged energy settled (V2G)", f"{summary['discharged_kwh_settled']:.1f} kWh"),
            ("cap violations", str(summary["cap_violations"])),
            ("plans made", str(summary["plans"])),
            ("DSO event to profiles sent p50 / p99",
             f"{summary['event_to_profiles_p50_s']:.2f} / "
             f"{summary['event_to_profiles_p99_s']:.2f} s"),
            ("meter samples in the ledger", str(summary["meter_samples"])),
            ("wall time", f"{summary['wall_s']:.0f} s"),
            ("report", summary["report_png"])]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
