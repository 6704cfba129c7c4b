"""Seeded synthetic fleets: sites of ~50 EVSEs under one feeder, for benchmarks and tests.

Shapes, not data: workplace sessions arrive 12:00-14:30 UTC and leave 17:00-20:00; evening
sessions arrive 17:00-21:00 and leave 06:00-11:30 the next day.  40 % of EVSEs are
bidirectional (OCPP 2.1); half of the EVs there offer V2G.  Each site has a connection
cap and an office base load; the feeder has a static cap, a DSO evening-peak cap from
16:00 to 20:00 UTC and an export cap.  Prices follow a day-ahead shape with an evening peak.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np

from aggregator.model import (
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    NodeKind,
    NodeLoad,
    OcppVersion,
    PriceSignal,
    Session,
)
from aggregator.scenario import Scenario

FLEET_START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EVSE_KW = 11.0
V2G_KW = 10.0


def _at(hours: float) -> datetime:
    """The horizon start plus ``hours``, rounded to the minute."""
    return FLEET_START + timedelta(minutes=round(hours * 60))


def generate_fleet(n_sessions: int, *, seed: int = 1, evses_per_site: int = 50,
                   n_intervals: int = 96, interval_minutes: int = 15) -> Scenario:
    """A feeder with ``ceil(n_sessions / 1.6 / evses_per_site)`` sites and ``n_sessions`` EVs."""
    if n_sessions < 1:
        raise ValueError("n_sessions must be >= 1")
    rng = np.random.default_rng(seed)
    n_evses = max(1, math.ceil(n_sessions / 1.6))  # 1.6 sessions per EVSE on average
    n_sites = max(1, math.ceil(n_evses / evses_per_site))
    nodes = [GridNode("feeder", NodeKind.FEEDER, name="MV feeder")]
    nodes += [GridNode(f"site-{i:03d}", NodeKind.SITE, parent_id="feeder")
              for i in range(n_sites)]
    evses = []
    for i in range(n_evses):
        v2g = rng.random() < 0.4
        evses.append(Evse(
            evse_id=f"evse-{i:05d}", node_id=f"site-{i % n_sites:03d}", max_import_kw=EVSE_KW,
            max_export_kw=V2G_KW if v2g else 0.0, v2g_capable=v2g,
            ocpp_version=OcppVersion.V21 if v2g else OcppVersion.V201))
    # every EVSE has an evening session; a random subset also has a workplace session
    two_sessions = np.zeros(n_evses, dtype=bool)
    two_sessions[rng.choice(n_evses, size=n_sessions - n_evses, replace=False)] = True
    sessions: list[Session] = []
    for evse, workplace in zip(evses, two_sessions, strict=True):
        offers_v2g = evse.v2g_capable and rng.random() < 0.5
        windows = []
        if workplace:
            windows.append((rng.uniform(0.0, 2.5), rng.uniform(5.0, 8.0)))
        free_from = windows[-1][1] + 0.25 if windows else 0.0
        windows.append((max(free_from, rng.uniform(5.25, 9.0)), rng.uniform(18.0, 23.5)))
        for arrive_h, leave_h in windows:
            capacity = float(rng.choice([40.0, 58.0, 64.0, 77.0, 82.0]))
            soc = float(rng.uniform(0.15, 0.6))
            wish = min(capacity * (1 - soc), float(rng.uniform(5.0, 30.0)))
            sessions.append(Session(
                session_id=f"s-{len(sessions):05d}", evse_id=evse.evse_id,
                arrival=_at(arrive_h), departure=_at(leave_h),
                battery_capacity_kwh=capacity, soc_initial=soc,
                energy_requested_kwh=math.floor(wish * 100) / 100,
                max_charge_kw=float(rng.choice([7.4, 11.0, 11.0])),
                max_discharge_kw=V2G_KW if offers_v2g else 0.0, min_soc_v2g=0.4))
    end = FLEET_START + timedelta(minutes=n_intervals * interval_minutes)
    constraints = [GridConstraint(
        node_id="feeder", start=FLEET_START, end=end, source="rating", source_ref="feeder",
        received_at=FLEET_START, import_max_kw=4.5 * n_evses, export_max_kw=1.0 * n_evses),
        GridConstraint(
        node_id="feeder", start=_at(4.0), end=_at(8.0), source="openadr",
        source_ref="evt-evening-peak/mod-0", received_at=FLEET_START,
        import_max_kw=1.6 * n_evses, priority=1)]
    site_evses = [sum(1 for e in evses if e.node_id == node.node_id) for node in nodes[1:]]
    constraints += [GridConstraint(
        node_id=node.node_id, start=FLEET_START, end=end, source="rating",
        source_ref=node.node_id, received_at=FLEET_START,
        import_max_kw=round(EVSE_KW * 0.6 * count + 40.0, 1), export_max_kw=0.5 * count * V2G_KW)
        for node, count in zip(nodes[1:], site_evses, strict=True)]
    loads = []
    for node, count in zip(nodes[1:], site_evses, strict=True):
        office_kw = 0.8 * count * float(rng.uniform(0.7, 1.3))
        loads += [NodeLoad(node.node_id, FLEET_START, _at(6.0), office_kw),
                  NodeLoad(node.node_id, _at(6.0), _at(19.0), 0.25 * office_kw),
                  NodeLoad(node.node_id, _at(19.0), end, office_kw)]
    prices = []
    for hour in range(math.ceil(n_intervals * interval_minutes / 60)):
        utc_hour = (FLEET_START.hour + hour) % 24
        peak = 0.22 if 16 <= utc_hour < 20 else 0.0
        night = -0.08 if utc_hour < 5 or utc_hour >= 23 else 0.0
        price = round(0.24 + peak + night + float(rng.normal(0, 0.01)), 4)
        prices.append(PriceSignal(_at(hour), min(_at(hour + 1), end), price,
                                  max(0.0, round(price - 0.07, 4)), source="day-ahead"))
    tree = GridTree(tuple(nodes), tuple(evses))
    return Scenario(name=f"fleet-{n_sessions}-seed{seed}", start=FLEET_START,
                    interval=timedelta(minutes=interval_minutes), n_intervals=n_intervals,
                    tree=tree, sessions=tuple(sessions), constraints=tuple(constraints),
                    prices=tuple(prices), loads=tuple(loads),
                    description="synthetic fleet for benchmarks (see aggregator.fleet)")
