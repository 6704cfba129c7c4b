"""DR baselines checked against hand-made load histories."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from aggregator.baselines import (
    delivered_flexibility_kw,
    event_value,
    meter_after,
    meter_before,
    ten_in_ten,
)
from aggregator.model import ModelError

EVENT_DAY = datetime(2026, 11, 20, tzinfo=UTC)  # a Friday
START, END = EVENT_DAY + timedelta(hours=16), EVENT_DAY + timedelta(hours=18)
STEP = timedelta(minutes=15)


def history(weekday_kw: float = 10.0, weekend_kw: float = 30.0, morning_kw: float = 10.0,
            event_kw: float = 6.0, days: int = 30) -> pd.Series:
    """Flat load per day kind; on the event day ``morning_kw`` before 16:00, ``event_kw`` after."""
    index = pd.date_range(EVENT_DAY - timedelta(days=days), EVENT_DAY + timedelta(days=1),
                          freq=STEP, inclusive="left", tz="UTC")
    values = [weekend_kw if t.weekday() >= 5 else weekday_kw for t in index]
    load = pd.Series(values, index=index, dtype=float)
    today = index >= EVENT_DAY
    load[today & (index < START)] = morning_kw
    load[today & (index >= START)] = event_kw
    return load


def test_ten_in_ten_uses_same_kind_days_and_shows_delivered_flexibility() -> None:
    load = history()
    baseline = ten_in_ten(load, START, END)
    assert len(baseline) == 8 and (baseline == 10.0).all()  # weekends (30 kW) left out
    flexibility = delivered_flexibility_kw(load, baseline)
    assert (flexibility == 4.0).all()  # 10 kW expected, 6 kW drawn
    assert event_value(flexibility, 0.5, STEP) == pytest.approx(4.0 * 2 * 0.5)  # 8 kWh x 0.5


def test_same_day_adjustment_and_its_cap() -> None:
    assert np.allclose(ten_in_ten(history(morning_kw=11.0), START, END), 11.0)
    capped = ten_in_ten(history(morning_kw=15.0), START, END)  # +50 % capped at +20 %
    assert np.allclose(capped, 12.0)
    floor = ten_in_ten(history(morning_kw=2.0), START, END)  # -80 % capped at -20 %
    assert np.allclose(floor, 8.0)


def test_event_days_are_excluded_and_too_few_days_is_an_error() -> None:
    load = history()
    earlier_event = date(2026, 11, 19)
    load[(load.index.date == earlier_event)] = 100.0  # an earlier event day looks odd
    assert (ten_in_ten(load, START, END, excluded_days=[earlier_event]) == 10.0).all()
    with pytest.raises(ModelError, match="only 4 eligible days"):
        ten_in_ten(history(days=5), START, END)  # 15-19 Nov: a Sunday and 4 weekdays


def test_meter_before_holds_the_last_hour_flat() -> None:
    load = history(morning_kw=9.0)
    baseline = meter_before(load, START, END)
    assert (baseline == 9.0).all() and len(baseline) == 8
    with pytest.raises(ModelError, match="missing readings inside the event"):
        delivered_flexibility_kw(load.drop(index=START + STEP), baseline)


def test_meter_after_holds_the_hour_after_flat() -> None:
    load = history()
    after_kw = 8.5
    load[(load.index >= END) & (load.index < END + timedelta(hours=1))] = after_kw
    baseline = meter_after(load, START, END)
    assert len(baseline) == 8 and (baseline == after_kw).all()
    assert (delivered_flexibility_kw(load, baseline) == after_kw - 6.0).all()
    with pytest.raises(ModelError, match="no complete readings in the 1:00:00 after the event"):
        meter_after(load[load.index < END + timedelta(minutes=30)], START, END)


def test_prices_per_interval() -> None:
    load = history()
    flexibility = delivered_flexibility_kw(load, ten_in_ten(load, START, END))
    prices = pd.Series([0.3] * 4 + [0.6] * 4, index=flexibility.index)
    assert event_value(flexibility, prices, STEP) == pytest.approx(4 * 0.25 * (4 * 0.3 + 4 * 0.6))
