"""Settlement of one DR event from the ledger: baseline, delivered flexibility, its value.

The event comes from the DR event journal (its latest modification; earlier ones are
reported, not used).  Its target nodes are the nodes its limits and demand charges name;
the EVSEs below them come from the operator's grid tree.  Per interval, each EVSE's net
load (import minus export register deltas: a net load, right for DR performance; session
settlement stays never-netted) is summed over the EVSEs.  An interval that no complete
register step covers (no readings, a reset, a long step that moved energy) is flagged and
never filled: it gets no actual load, and a history day with such intervals cannot count
towards a baseline (``ten_in_ten`` skips it; the settlement lists it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, text

from aggregator.baselines import (
    delivered_flexibility_kw,
    event_value,
    meter_after,
    meter_before,
    ten_in_ten,
)
from aggregator.dr_events import DrEvent, events_in, journal
from aggregator.export import chain_table
from aggregator.ledger import Ledger, to_us
from aggregator.model import Evse, GridTree, Measurand, ModelError

if TYPE_CHECKING:
    from aggregator.service_config import ServiceConfig


class SettlementError(ModelError):
    """An event that cannot be settled as asked; the message names the field and why."""


@dataclass(frozen=True)
class BaselineMethod:
    """A baseline by name, with how much load history before / after the event it reads."""

    compute: Callable[[pd.Series, datetime, datetime], pd.Series]
    history: timedelta
    after: timedelta = timedelta(0)


LOOKBACK_DAYS = 45  # how far back ten_in_ten looks for eligible days
ADJUSTMENT = (timedelta(hours=4), timedelta(hours=1))  # its same-day adjustment window
BASELINES: dict[str, BaselineMethod] = {
    "ten_in_ten": BaselineMethod(ten_in_ten, timedelta(days=LOOKBACK_DAYS) + ADJUSTMENT[0]),
    "meter_before": BaselineMethod(meter_before, timedelta(hours=1)),
    "meter_after": BaselineMethod(meter_after, timedelta(0), timedelta(hours=1)),
}
DAY_US = 86_400_000_000
PLAUSIBLE = 1.5  # a register step above 1.5 x the EVSE's rating is not one meter's
ROW_COLUMNS = ["baseline_kw", "actual_kw", "delivered_kw", "delivered_kwh", "price_per_kwh",
               "value", "flagged", "flag_reason"]


@dataclass(frozen=True)
class EventSettlement:
    """One DR event settled: per-interval rows (UTC interval starts) and what was used.

    ``rows`` has the columns ``ROW_COLUMNS``; a flagged row has no actual load, delivered
    flexibility or value.  ``excluded_days`` names history days whose baseline hours have
    flagged intervals, with the EVSEs at fault (they cannot count towards the baseline).
    """

    event: DrEvent
    earlier: tuple[DrEvent, ...]
    baseline: str
    nodes: tuple[str, ...]
    evse_ids: tuple[str, ...]
    interval: timedelta
    rows: pd.DataFrame
    excluded_days: tuple[str, ...] = field(default=())

    @property
    def delivered_kwh(self) -> float:
        """Delivered flexibility over the unflagged intervals (kWh)."""
        return float(self.rows["delivered_kwh"].sum())

    @property
    def value(self) -> float:
        """The delivered flexibility's worth at the event's price (unflagged, priced rows)."""
        ok = ~self.rows["flagged"] & self.rows["price_per_kwh"].notna()
        return event_value(self.rows.loc[ok, "delivered_kw"], self.rows.loc[ok, "price_per_kwh"],
                           self.interval)

    @property
    def flagged_intervals(self) -> int:
        return int(self.rows["flagged"].sum())


def settle_event(ledger: Ledger, event_id: str, topology: ServiceConfig | GridTree, *,
                 baseline: str = "ten_in_ten", interval: timedelta = timedelta(minutes=15),
                 source: str | None = None, max_gap_s: float = 900.0,
                 price_per_kwh: float | None = None) -> EventSettlement:
    """Settle the latest modification of DR event ``event_id`` from the ledger.

    ``topology`` is the service configuration (EVSEs found by station id and EVSE number,
    which every OCPP version sends) or a bare grid tree (EVSEs found by the ``evse_id`` on
    the samples).  ``price_per_kwh`` prices intervals the event carries no price for.
    """
    method = BASELINES.get(baseline)
    if method is None:
        raise SettlementError("baseline", f"one of {sorted(BASELINES)}, got {baseline!r}")
    event, earlier = _latest(ledger, event_id, source)
    if timedelta(days=1) % interval or (event.end - event.start) % interval:
        raise SettlementError("interval", f"{interval} must divide a day and the event's "
                                          f"window {event.start:%H:%M}-{event.end:%H:%M}")
    tree = topology if isinstance(topology, GridTree) else topology.tree
    nodes = _target_nodes(event, tree)
    evses = [e for e in tree.evses if e.evse_id in nodes
             or any(n in tree.ancestors(e.node_id) for n in nodes)]
    if not evses:
        raise SettlementError("event", f"no EVSE below the event's nodes {nodes}")
    grid = pd.date_range(event.start - method.history, event.end + method.after,
                         freq=interval, inclusive="left", tz="UTC")
    load_kw, reasons = _node_load(ledger, topology, evses, grid, interval, max_gap_s)
    excluded: list[str] = []
    try:
        if baseline == "ten_in_ten":
            event_days = _earlier_event_days(ledger, event)
            excluded = _gap_days(event, grid, reasons, event_days)
            baseline_kw = ten_in_ten(load_kw, event.start, event.end, excluded_days=event_days,
                                     adjustment=ADJUSTMENT, lookback_days=LOOKBACK_DAYS)
        else:
            baseline_kw = method.compute(load_kw, event.start, event.end)
    except ModelError as err:
        shown = "; ".join([*excluded[:5], *_window_gaps(event, grid, reasons, method)[:5]])
        raise SettlementError("baseline", f"{baseline} for event {event.event_id!r}: "
                              f"{err.message}{f' ({shown})' if shown else ''}") from None
    rows = _rows(event, baseline_kw, load_kw, reasons, interval, price_per_kwh)
    return EventSettlement(event, earlier, baseline, nodes, tuple(e.evse_id for e in evses),
                           interval, rows, tuple(excluded))


def _latest(ledger: Ledger, event_id: str,
            source: str | None) -> tuple[DrEvent, tuple[DrEvent, ...]]:
    """The highest modification of the event (earlier ones are superseded by it)."""
    found = journal(ledger, event_id=event_id, source=source)
    if not found:
        raise SettlementError("event_id", f"no DR event {event_id!r} in the journal"
                                          f"{f' from {source}' if source else ''}")
    sources = sorted({e.source for e in found})
    if len(sources) > 1:
        raise SettlementError("event_id", f"{event_id!r} was journaled by {sources}: "
                                          f"name the source")
    latest = max(found, key=lambda e: (e.modification_number, e.received_at))
    if not latest.applied:
        raise SettlementError("event_id", f"event {event_id!r} mod {latest.modification_number}"
                              f" ({latest.status}) was not applied: {latest.reason}")
    return latest, tuple(e for e in found if e is not latest)


def _target_nodes(event: DrEvent, tree: GridTree) -> tuple[str, ...]:
    names = sorted({c.node_id for c in event.limits} | {c.node_id for c in event.demand_charges})
    if not names:
        raise SettlementError("event", f"event {event.event_id!r} names no grid node")
    for name in names:
        if not tree.can_constrain(name):
            raise SettlementError("event", f"event {event.event_id!r} names node {name!r}, "
                                           f"which is not in the grid tree")
    return tuple(names)


REGISTERS_SQL = """
SELECT station_id, evse_number, evse_id, measurand, measured_at_us, value
FROM meter_samples
WHERE measurand IN ('Energy.Active.Import.Register', 'Energy.Active.Export.Register')
  AND phase = '' AND measured_at_us >= :from_us AND measured_at_us < :to_us
  AND {where}
ORDER BY measured_at_us, id
"""


def _node_load(ledger: Ledger, topology: ServiceConfig | GridTree, evses: Sequence[Evse],
               grid: pd.DatetimeIndex, interval: timedelta,
               max_gap_s: float) -> tuple[pd.Series, dict[int, set[str]]]:
    """Net kW per interval over ``evses`` (NaN where flagged) and why each is flagged."""
    wanted = {e.evse_id: e for e in evses}
    places: dict[tuple[str, int], str] | None = None  # None: the samples' evse_id says
    where, names = "evse_id IN :names", sorted(wanted)
    if not isinstance(topology, GridTree):
        places = {(s.station_id, n): evse_id for s in topology.stations
                  for n, evse_id in s.evses.items() if evse_id in wanted}
        where, names = "station_id IN :names", sorted({s for s, _ in places})
    edges = np.append(grid.as_unit("us").asi8, to_us(grid[-1] + interval))
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    if names:
        query = text(REGISTERS_SQL.format(where=where)).bindparams(
            bindparam("names", expanding=True))
        span = {"names": names, "from_us": int(edges[0]) - DAY_US,
                "to_us": int(edges[-1]) + DAY_US}  # a reading before the first interval
        with ledger.engine.connect() as connection:
            for row in connection.execute(query, span):
                evse_id = row.evse_id if places is None else places.get(
                    (row.station_id, int(row.evse_number)))
                if evse_id in wanted:
                    times, values = series.setdefault((evse_id, row.measurand), ([], []))
                    times.append(int(row.measured_at_us))
                    values.append(float(row.value))
    total_kwh = np.zeros(len(grid))
    reasons: dict[int, set[str]] = {}
    for evse in evses:
        for measurand, sign in ((Measurand.ENERGY_IMPORT, 1.0), (Measurand.ENERGY_EXPORT, -1.0)):
            found = series.get((evse.evse_id, measurand.value))
            if found is None and measurand is Measurand.ENERGY_EXPORT and not evse.v2g_capable:
                continue  # an EVSE that cannot discharge exports nothing
            rating_kw = evse.max_import_kw if sign > 0 else evse.max_export_kw
            kwh, flags = _register_kwh(found, edges, int(max_gap_s * 1_000_000), rating_kw)
            total_kwh += sign * kwh
            for position, why in flags.items():
                reasons.setdefault(position, set()).add(
                    f"{evse.evse_id} {measurand.value.split('.')[2].lower()}: {why}")
    load_kw = pd.Series(total_kwh / (interval.total_seconds() / 3600.0), index=grid,
                        name="load_kw")
    load_kw.iloc[sorted(reasons)] = np.nan
    return load_kw, reasons


def _register_kwh(found: tuple[list[int], list[float]] | None, edges: np.ndarray,
                  max_gap_us: int, rating_kw: float) -> tuple[np.ndarray, dict[int, str]]:
    """kWh per interval from one register's readings, and the intervals it cannot cover.

    One meter per EVSE, its register cumulative across transactions.  Energy between two
    readings is spread evenly over the time between them; a step that goes down (a
    reset), spans more than ``max_gap_us`` while moving energy, or moves more than the
    EVSE's rating allows (readings that cannot be one register) is not known per
    interval, so every interval it touches is flagged.
    """
    count = len(edges) - 1
    if found is None:
        return np.zeros(count), dict.fromkeys(range(count), "no register readings")
    times, values = np.asarray(found[0], dtype=np.int64), np.asarray(found[1])
    deltas, steps = np.diff(values), np.diff(times)
    implausible = deltas > PLAUSIBLE * rating_kw * steps / 3600.0 / 1000.0  # Wh vs kW x us
    bad = (deltas < 0) | ((steps > max_gap_us) & (deltas != 0)) | implausible
    cumulative = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, deltas))])
    last = len(times) - 1 - np.unique(times[::-1], return_index=True)[1]
    kwh = np.diff(np.interp(edges, times[last].astype(float), cumulative[last])) / 1000.0
    flags: dict[int, str] = {}
    starts, ends = edges[:-1], edges[1:]
    for outside in np.flatnonzero((starts < times[0]) | (ends > times[-1])):
        flags[int(outside)] = "no register readings"
    for i in np.flatnonzero(bad):
        lo = int(np.searchsorted(ends, times[i], side="right"))
        hi = int(np.searchsorted(starts, times[i + 1], side="left"))
        why = "register reset" if deltas[i] < 0 else (
            "step above the EVSE's rating" if implausible[i] else "gap between readings")
        for position in range(lo, hi):
            flags.setdefault(position, why)
    return kwh, flags


def _gap_days(event: DrEvent, grid: pd.DatetimeIndex, reasons: Mapping[int, set[str]],
              event_days: set[date], days: int = 10) -> list[str]:
    """The days ``ten_in_ten`` passes over for flagged intervals, newest first, until it
    has ``days`` complete ones: each with the EVSE registers at fault."""
    start, end = pd.Timestamp(event.start), pd.Timestamp(event.end)
    hours = ((grid >= start - ADJUSTMENT[0]) & (grid < start - ADJUSTMENT[1])) | (
        (grid >= start) & (grid < end))
    weekend = event.start.weekday() >= 5
    found: list[str] = []
    complete = 0
    for back in range(1, LOOKBACK_DAYS + 1):
        day = event.start - timedelta(days=back)
        if day.date() in event_days or (day.weekday() >= 5) != weekend:
            continue
        shifted = grid.get_indexer(grid[hours] - pd.Timedelta(days=back))
        why = sorted({r for p in shifted for r in reasons.get(int(p), ())} |
                     ({"before the ledger's readings"} if (shifted < 0).any() else set()))
        if why:
            found.append(f"{day:%Y-%m-%d} excluded: {', '.join(why)}")
        else:
            complete += 1
            if complete == days:
                break
    return found


def _window_gaps(event: DrEvent, grid: pd.DatetimeIndex, reasons: Mapping[int, set[str]],
                 method: BaselineMethod) -> list[str]:
    """Flagged intervals in the hour a meter-before / meter-after baseline reads."""
    lo, hi = (event.end, event.end + method.after) if method.after else (
        event.start - method.history, event.start)
    return [f"{grid[p]:%Y-%m-%dT%H:%MZ}: {', '.join(sorted(reasons[p]))}"
            for p in sorted(reasons) if lo <= grid[p] < hi]


def _earlier_event_days(ledger: Ledger, event: DrEvent) -> set[date]:
    """UTC days of other applied events in the look-back: not typical days for a baseline."""
    start = event.start - BASELINES["ten_in_ten"].history
    days: set[date] = set()
    for other in events_in(ledger, start, event.start):
        if (other.source, other.event_id) == (event.source, event.event_id):
            continue
        day = other.start.date()
        while day <= (other.end - timedelta(microseconds=1)).date():
            days.add(day)
            day += timedelta(days=1)
    days.discard(event.start.date())
    return days


def _rows(event: DrEvent, baseline_kw: pd.Series, load_kw: pd.Series,
          reasons: Mapping[int, set[str]], interval: timedelta,
          price_per_kwh: float | None) -> pd.DataFrame:
    index = baseline_kw.index
    positions = load_kw.index.get_indexer(index)
    reason = ["; ".join(sorted(reasons.get(int(p), ()))) for p in positions]
    flagged = pd.Series([bool(r) for r in reason], index=index)
    actual = load_kw.reindex(index)
    delivered = delivered_flexibility_kw(actual[~flagged], baseline_kw[~flagged]).reindex(index)
    prices = pd.Series(np.nan if price_per_kwh is None else price_per_kwh, index=index)
    for signal in event.prices:  # later signals win where they overlap
        prices[(index >= signal.start) & (index < signal.end)] = signal.import_price_per_kwh
    hours = interval.total_seconds() / 3600.0
    return pd.DataFrame({
        "baseline_kw": baseline_kw, "actual_kw": actual, "delivered_kw": delivered,
        "delivered_kwh": delivered * hours, "price_per_kwh": prices,
        "value": delivered * hours * prices, "flagged": flagged, "flag_reason": reason},
        index=index)[ROW_COLUMNS]


EVENT_COLUMNS = ["source", "event_id", "modification_number", "baseline", "interval_start",
                 *ROW_COLUMNS]
EVENT_TEXT_COLUMNS = ["source", "event_id", "baseline", "interval_start", "flag_reason"]


def event_table(settlement: EventSettlement) -> pd.DataFrame:
    """One hash-chained row per event interval, for ``export.write_table`` (CSV / Parquet).

    Each row names the event, its modification and the baseline method, so a file stands
    on its own; ``verify_table(table, EVENT_COLUMNS)`` finds the first changed row.
    """
    rows = settlement.rows
    frame = pd.DataFrame({
        "source": settlement.event.source, "event_id": settlement.event.event_id,
        "modification_number": settlement.event.modification_number,
        "baseline": settlement.baseline,
        "interval_start": [f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in rows.index],
        **{c: rows[c].round(6).to_numpy() for c in ROW_COLUMNS[:-2]},
        "flagged": rows["flagged"].to_numpy(dtype=bool),
        "flag_reason": rows["flag_reason"].to_numpy()})
    return chain_table(frame, EVENT_COLUMNS)
