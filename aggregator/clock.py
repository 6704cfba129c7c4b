"""Clocks: the wall clock in UTC, and a scaled clock for demos and accelerated replays.

Everything that asks "what time is it" takes a ``Clock`` (a callable returning an aware
UTC datetime), so the service, the demo and replays run the same code on different time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aggregator.model import ModelError, require_utc

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """The start of the ``step``-long interval (counted from the Unix epoch) holding
    ``moment``: planning intervals line up however the clock was started."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    moment = require_utc(moment, "moment")
    return epoch + ((moment - epoch) // step) * step


@dataclass
class ScaledClock:
    """Simulated time that starts at ``origin`` and runs ``speed`` times faster than the
    wall clock (``speed=60``: one simulated minute per real second).

    ``held=True`` keeps it at ``origin`` until ``start()``, so a demo can set up its
    peers without simulated time slipping away.
    """

    origin: datetime
    speed: float
    held: bool = False
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.origin = require_utc(self.origin, "origin")
        if not self.speed > 0:
            raise ModelError("speed", f"must be > 0, got {self.speed!r}")

    def __call__(self) -> datetime:
        if self.held:
            return self.origin
        return self.origin + timedelta(seconds=(time.monotonic() - self._started) * self.speed)

    def start(self) -> None:
        """Let a held clock run from ``origin`` now."""
        if self.held:
            self.held = False
            self._started = time.monotonic()

    def real_s(self, simulated: timedelta) -> float:
        """Wall-clock seconds that ``simulated`` time takes."""
        return simulated.total_seconds() / self.speed

    async def sleep_until(self, moment: datetime) -> None:
        """Wait (on the event loop) until the simulated clock reaches ``moment``."""
        delay_s = self.real_s(require_utc(moment, "moment") - self())
        if delay_s > 0:
            await asyncio.sleep(delay_s)
