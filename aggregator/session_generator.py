"""Seeded, realistic EV charging sessions for scenario files and benchmarks.

``SessionGenerator`` holds the distributions (validated, so a scenario file can name a
bad key); ``generate_sessions`` draws from them and places the sessions on EVSEs.  The
same generator, EVSEs and window always give the same sessions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import numpy as np

from aggregator.model import Evse, ModelError, Session, require_utc

log = logging.getLogger(__name__)

SOC_MIN = 0.05
SOC_MAX = 0.9
_MINUTE = timedelta(minutes=1)
_INT_FIELDS = ("count", "seed")


@dataclass(frozen=True)
class SessionGenerator:
    """Distributions of arrival, dwell, energy and state of charge of a session fleet.

    Arrival: normal, ``arrival_mean_h`` hours after the window's start; dwell and energy:
    lognormal by median and shape ``sigma``; initial SoC: normal, clipped to 0.05..0.9.
    Discharge (``max_discharge_kw``) is offered only at EVSEs that can discharge.

    The defaults are typical of workplace charging as published for Caltech's ACN-Data
    (Lee, Li and Low, "ACN-Data", e-Energy 2019): arrivals around 08:00-09:00 local (so
    ``arrival_mean_h = 1`` for a window starting at 07:00-08:00 local), a dwell of about
    7 h median and about 10 kWh median energy per session.  They are typical values
    taken from that description, not a fit of the data set; battery, SoC and power
    defaults are those of a common mid-size EV on an 11 kW AC charger.
    """

    count: int
    seed: int = 0
    arrival_mean_h: float = 1.0
    arrival_sd_h: float = 1.5
    dwell_median_h: float = 7.0
    dwell_sigma: float = 0.5
    energy_median_kwh: float = 10.0
    energy_sigma: float = 0.6
    battery_kwh: float = 60.0
    soc_mean: float = 0.35
    soc_sd: float = 0.1
    max_charge_kw: float = 11.0
    max_discharge_kw: float = 0.0
    min_soc_v2g: float = 0.2
    min_dwell_h: float = 0.25

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelError(name, f"expected an integer, got {value!r}")
            if value < 0:
                raise ModelError(name, f"must be >= 0, got {value}")
        for item in fields(self):
            if item.name not in _INT_FIELDS:
                _number(self, item.name)
        _at_least(self, "arrival_sd_h", 0.0)
        _positive(self, "dwell_median_h")
        _at_least(self, "dwell_sigma", 0.0)
        _positive(self, "energy_median_kwh")
        _at_least(self, "energy_sigma", 0.0)
        if self.battery_kwh < 0.1:  # Session's smallest battery
            raise ModelError("battery_kwh", f"must be >= 0.1, got {self.battery_kwh}")
        _within(self, "soc_mean", 0.0, 1.0)
        _at_least(self, "soc_sd", 0.0)
        _positive(self, "max_charge_kw")
        _at_least(self, "max_discharge_kw", 0.0)
        _within(self, "min_soc_v2g", 0.0, 1.0)
        _positive(self, "min_dwell_h")


def _number(generator: SessionGenerator, name: str) -> None:
    """Require a finite int or float in ``name`` (a bool is refused)."""
    value = getattr(generator, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(name, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ModelError(name, f"must be finite, got {value}")


def _at_least(generator: SessionGenerator, name: str, minimum: float) -> None:
    value = getattr(generator, name)
    if value < minimum:
        raise ModelError(name, f"must be >= {minimum}, got {value}")


def _positive(generator: SessionGenerator, name: str) -> None:
    value = getattr(generator, name)
    if not value > 0:
        raise ModelError(name, f"must be > 0, got {value}")


def _within(generator: SessionGenerator, name: str, low: float, high: float) -> None:
    value = getattr(generator, name)
    if not low <= value <= high:
        raise ModelError(name, f"must be in {low}..{high}, got {value}")


def generate_sessions(generator: SessionGenerator, evses: Sequence[Evse], start: datetime,
                      end: datetime, *, id_prefix: str = "g") -> tuple[Session, ...]:
    """``generator.count`` sessions in ``[start, end]`` on ``evses``, sorted by arrival.

    Draws, with ``numpy.random.default_rng(seed)``, every arrival, then every dwell, every
    energy and every SoC.  Times are ``start`` plus whole minutes; an arrival lies in
    ``[start, end - min_dwell_h]``, a departure ``max(dwell, min_dwell_h)`` later but not
    after ``end``; the energy fits the battery's room.  In arrival order each session
    takes the first EVSE (in ``evses`` order) free at its arrival; a session that finds
    none is left out (logged at INFO), so fewer than ``count`` may come back.  Ids are
    ``f"{id_prefix}-{i:04d}"`` in arrival order.
    """
    g = generator
    start = require_utc(start, "start")
    end = require_utc(end, "end")
    ids = [evse.evse_id for evse in evses]
    if len(set(ids)) != len(ids):
        raise ModelError("evses", "two EVSEs share an evse_id")
    window_min = (end - start) // _MINUTE
    min_dwell_min = max(1, math.ceil(g.min_dwell_h * 60 - 1e-9))
    if window_min < min_dwell_min:
        raise ModelError("end", f"the window from start ({window_min} min) is shorter than "
                         f"min_dwell_h ({g.min_dwell_h} h)")
    rng = np.random.default_rng(g.seed)
    with np.errstate(over="ignore", invalid="ignore"):  # huge draws become inf, then clip
        arrival_h = rng.normal(g.arrival_mean_h, g.arrival_sd_h, g.count)
        dwell_h = rng.lognormal(math.log(g.dwell_median_h), g.dwell_sigma, g.count)
        energy_kwh = rng.lognormal(math.log(g.energy_median_kwh), g.energy_sigma, g.count)
        soc = np.clip(rng.normal(g.soc_mean, g.soc_sd, g.count), SOC_MIN, SOC_MAX)
        latest = window_min - min_dwell_min
        arrival_min = np.rint(np.clip(arrival_h * 60.0, 0.0, latest)).astype(np.int64)
        dwell_min = np.rint(np.clip(dwell_h * 60.0, min_dwell_min, window_min)).astype(np.int64)
    departure_min = np.minimum(arrival_min + dwell_min, window_min)
    room_kwh = g.battery_kwh * (1.0 - soc)
    # 1 Wh steps, rounded down so the request always fits the battery
    energy_kwh = np.floor(np.minimum(energy_kwh, room_kwh) * 1000.0) / 1000.0

    free_from = [-1] * len(evses)  # minute each EVSE's last session leaves
    sessions: list[Session] = []
    dropped = 0
    for k in np.argsort(arrival_min, kind="stable").tolist():
        arrive, leave = int(arrival_min[k]), int(departure_min[k])
        slot = next((i for i, free in enumerate(free_from) if free <= arrive), None)
        if slot is None:
            dropped += 1
            continue
        free_from[slot] = leave
        evse = evses[slot]
        sessions.append(Session(
            session_id=f"{id_prefix}-{len(sessions):04d}", evse_id=evse.evse_id,
            arrival=start + arrive * _MINUTE, departure=start + leave * _MINUTE,
            battery_capacity_kwh=float(g.battery_kwh), soc_initial=float(soc[k]),
            max_charge_kw=min(float(g.max_charge_kw), evse.max_import_kw),
            energy_requested_kwh=float(max(0.0, energy_kwh[k])),
            min_soc_v2g=float(g.min_soc_v2g),
            max_discharge_kw=min(float(g.max_discharge_kw), evse.max_export_kw)
            if evse.can_discharge else 0.0))
    if dropped:
        log.info("generate_sessions: %d of %d sessions found no free EVSE and were left out",
                 dropped, g.count)
    return tuple(sessions)
