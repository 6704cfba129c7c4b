"""Demand-response baselines: what a site would have drawn without the event.

Pluggable methods over a UTC-indexed, regularly sampled load series (kW):
- ``ten_in_ten``: CAISO-style average of the 10 most recent eligible days (same kind of
  day: weekday or weekend; no event days), with a same-day adjustment from the hours
  before the event, capped at +/-20 %;
- ``meter_before`` / ``meter_after``: the average load in a window just before / just
  after the event, held flat (PJM's hour-before and hour-after variants).
Delivered flexibility is baseline minus actual over the event; its value is that energy
at the event's price.  Days are UTC days (UTC everywhere); EV load fits baselines
poorly, so per-event results carry the method and its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from aggregator.model import ModelError, require_utc

Baseline = Callable[[pd.Series, datetime, datetime], pd.Series]


def _check(load_kw: pd.Series, start: datetime,
           end: datetime) -> tuple[pd.DatetimeIndex, pd.Timestamp, pd.Timestamp]:
    index = load_kw.index
    if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC":
        raise ModelError("load_kw", "needs a UTC DatetimeIndex")
    require_utc(start, "event_start")
    require_utc(end, "event_end")
    if end <= start:
        raise ModelError("event_end", "must be after event_start")
    return index, pd.Timestamp(start), pd.Timestamp(end)


def ten_in_ten(load_kw: pd.Series, event_start: datetime, event_end: datetime, *,
               days: int = 10, excluded_days: Iterable[date] = (),
               adjustment: tuple[timedelta, timedelta] = (timedelta(hours=4),
                                                          timedelta(hours=1)),
               cap: float = 0.2, lookback_days: int = 45) -> pd.Series:
    """The event window's baseline from the ``days`` most recent eligible days.

    Eligible: before the event day, same kind (weekday / weekend), not in
    ``excluded_days`` (earlier events), with data for every interval of the window.  The
    same-day adjustment multiplies by actual / baseline over ``[start - adjustment[0],
    start - adjustment[1])``, kept within ``1 +/- cap``.
    """
    index, start, end = _check(load_kw, event_start, event_end)
    window = index[(index >= start) & (index < end)]
    adjust = index[(index >= start - adjustment[0]) & (index < start - adjustment[1])]
    excluded = set(excluded_days)
    weekend = event_start.weekday() >= 5
    chosen: list[pd.Series] = []
    chosen_adjust: list[pd.Series] = []
    for back in range(1, lookback_days + 1):
        shift = pd.Timedelta(days=back)
        day = (event_start - shift).date()
        if day in excluded or ((event_start - shift).weekday() >= 5) != weekend:
            continue
        past = load_kw.reindex(window - shift)
        past_adjust = load_kw.reindex(adjust - shift)
        if past.isna().any() or past_adjust.isna().any():
            continue
        chosen.append(pd.Series(past.to_numpy(), index=window))
        chosen_adjust.append(pd.Series(past_adjust.to_numpy(), index=adjust))
        if len(chosen) == days:
            break
    if len(chosen) < days:
        raise ModelError("load_kw", f"only {len(chosen)} eligible days before "
                         f"{event_start:%Y-%m-%d} (need {days})")
    baseline = pd.concat(chosen, axis=1).mean(axis=1)
    expected = float(pd.concat(chosen_adjust, axis=1).mean(axis=1).mean()) if len(adjust) \
        else float("nan")
    actual = float(load_kw.reindex(adjust).mean()) if len(adjust) else float("nan")
    factor = 1.0
    if np.isfinite(expected) and np.isfinite(actual) and expected > 0:
        factor = min(1.0 + cap, max(1.0 - cap, actual / expected))
    return (baseline * factor).rename("baseline_kw")


def meter_before(load_kw: pd.Series, event_start: datetime, event_end: datetime, *,
                 window: timedelta = timedelta(hours=1)) -> pd.Series:
    """The average load over ``window`` before the event, held for the whole event."""
    return _held_flat(load_kw, event_start, event_end, window, after=False)


def meter_after(load_kw: pd.Series, event_start: datetime, event_end: datetime, *,
                window: timedelta = timedelta(hours=1)) -> pd.Series:
    """The average load over ``window`` after the event, held for the whole event.

    For events whose run-up distorts the hour before (pre-charging ahead of a cap).
    """
    return _held_flat(load_kw, event_start, event_end, window, after=True)


def _held_flat(load_kw: pd.Series, event_start: datetime, event_end: datetime,
               window: timedelta, *, after: bool) -> pd.Series:
    index, start, end = _check(load_kw, event_start, event_end)
    lo, hi = (end, end + window) if after else (start - window, start)
    near = load_kw[(index >= lo) & (index < hi)]
    step = index[1] - index[0] if len(index) > 1 else window  # regularly sampled
    if near.empty or len(near) < window / step or near.isna().any():
        raise ModelError("load_kw", f"no complete readings in the {window} "
                                    f"{'after' if after else 'before'} the event")
    during = index[(index >= start) & (index < end)]
    return pd.Series(float(near.mean()), index=during, name="baseline_kw")


def delivered_flexibility_kw(load_kw: pd.Series, baseline_kw: pd.Series) -> pd.Series:
    """Per event interval, how much less the site drew than its baseline (kW)."""
    actual = load_kw.reindex(baseline_kw.index)
    if actual.isna().any():
        raise ModelError("load_kw", "missing readings inside the event (none are filled in)")
    return (baseline_kw - actual).rename("flexibility_kw")


def event_value(flexibility_kw: pd.Series, price_per_kwh: float | pd.Series,
                interval: timedelta) -> float:
    """The delivered flexibility's worth: energy (kWh) times the event's price."""
    hours = interval.total_seconds() / 3600.0
    prices = price_per_kwh.reindex(flexibility_kw.index) if isinstance(price_per_kwh,
                                                                       pd.Series) \
        else pd.Series(price_per_kwh, index=flexibility_kw.index)
    return float((flexibility_kw * hours * prices).sum())
