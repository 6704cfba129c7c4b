"""Clocks: interval floors line up, a scaled clock runs fast and can be held."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.clock import ScaledClock, floor_to
from aggregator.model import ModelError

T0 = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)


def test_floor_to_counts_intervals_from_the_epoch() -> None:
    assert floor_to(T0 + timedelta(minutes=14, seconds=59), timedelta(minutes=15)) == T0
    assert floor_to(T0 + timedelta(minutes=15), timedelta(minutes=15)) == T0 + timedelta(
        minutes=15)
    with pytest.raises(ModelError, match="moment"):
        floor_to(datetime(2026, 1, 1), timedelta(minutes=15))


def test_a_held_scaled_clock_stands_still_until_started_then_runs_fast() -> None:
    clock = ScaledClock(T0, speed=600.0, held=True)
    time.sleep(0.02)
    assert clock() == T0
    clock.start()
    asyncio.run(clock.sleep_until(T0 + timedelta(minutes=1)))  # 0.1 s of wall time
    assert clock() >= T0 + timedelta(minutes=1)
    assert clock.real_s(timedelta(minutes=10)) == pytest.approx(1.0)
    with pytest.raises(ModelError, match="speed"):
        ScaledClock(T0, speed=0)
