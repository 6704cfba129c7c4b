"""Bridge to Caltech's ACN-Sim (``acnportal``): its scheduling algorithms on our sessions.

``run_acn`` replays the same sessions and aggregate limit that gridflex's LP / MILP get
through ACN-Sim's simulator, once per algorithm, so ``gridflex bench quality`` can set
delivered energy, cost and peak of ours beside ACN's baselines.

How the two models are made to agree:
- ACN-Sim works in amps: a pilot signal (A) per EVSE and period; kW = A * voltage / 1000
  (one phase, every EVSE at phase angle 0, so the aggregate limit is a plain sum of amps:
  ``aggregate_limit_kw * 1000 / voltage_v``).
- Each EV gets an ideal ``Battery`` (no taper) of capacity = its request, empty on
  arrival, max power = ``max_charge_kw``: it can never take more than asked, like the LP.
- ACN's algorithms only see the EVSE's maximum pilot, not the car's.  With
  ``ev_limits_known`` (default) each session's pilot bound is also
  ``max_charge_kw * 1000 / voltage_v`` (the LP knows that limit too); without it an
  algorithm may reserve amps of the aggregate limit that the car then does not draw.
- A session charges in periods ``[arrival_period, departure_period)``.

acnportal is imported lazily: the rest of gridflex works without it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import math
import sys
import types
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aggregator.model import ModelError

ALGORITHMS = ("uncontrolled", "edf", "llf", "round_robin", "adaptive")
"""Names ``run_acn`` accepts (its default runs them all, in this order)."""

ACNPORTAL_REQUIREMENT = "acnportal>=0.3.3,<0.4"
"""What to install for the bridge (0.3.3, the last release, runs on numpy 2 / pandas 3)."""

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # ACN needs a start; only its tariff signals read it
_LIMIT_TOL_KW = 1e-6


class AcnSimUnavailableError(ImportError):
    """acnportal (or, for ``adaptive``, adacharge) is not installed."""


@dataclass(frozen=True, slots=True)
class AcnSession:
    """One charging session as ACN-Sim sees it (periods are indices into the horizon)."""

    session_id: str
    station_id: str
    arrival_period: int
    departure_period: int  # exclusive: the first period the EV is gone
    energy_requested_kwh: float
    max_charge_kw: float


@dataclass(frozen=True, slots=True)
class AcnResult:
    """One algorithm's outcome; with ``error`` set it did not run and the figures are 0."""

    algorithm: str
    energy_delivered_kwh: float
    energy_requested_kwh: float
    energy_delivered_pct: float  # 100 when nothing was requested
    cost: float  # sum over periods of power_kw * period_h * import price
    peak_kw: float  # max of power_kw (actual draw, not pilots)
    power_kw: tuple[float, ...]  # aggregate actual draw per period, n_periods long
    session_delivered_kwh: Mapping[str, float]  # ACN's own count per EV
    session_power_kw: Mapping[str, tuple[float, ...]]  # per session, n_periods long
    periods_over_limit: int  # periods whose draw exceeds aggregate_limit_kw
    error: str | None = None


def run_acn(sessions: Sequence[AcnSession], *, period_min: int, n_periods: int,
            voltage_v: float, evse_max_a: float, aggregate_limit_kw: float | None,
            import_price_per_kwh: Sequence[float],
            algorithms: Sequence[str] = ALGORITHMS,
            ev_limits_known: bool = True, round_robin_step_a: float = 0.1) -> list[AcnResult]:
    """Simulate ``sessions`` under each of ``algorithms`` in ACN-Sim, one result each.

    Raises ``ModelError`` for bad input and ``AcnSimUnavailableError`` when acnportal is
    missing; an algorithm that cannot run here (``adaptive`` without adacharge) gets a
    result with ``error`` instead.  ``round_robin_step_a`` is the amps Round Robin hands
    out per turn (ACN's default 0.1 A; its run time grows as the step shrinks).
    """
    _validate(sessions, period_min, n_periods, voltage_v, evse_max_a, aggregate_limit_kw,
              import_price_per_kwh, algorithms)
    if not round_robin_step_a > 0:
        raise ModelError("round_robin_step_a", "must be > 0")
    acnsim, acn_algorithms = _import_acn()
    requested = sum(s.energy_requested_kwh for s in sessions)
    results: list[AcnResult] = []
    for name in algorithms:
        try:
            scheduler = _scheduler(name, acn_algorithms, round_robin_step_a)
        except AcnSimUnavailableError as err:
            results.append(AcnResult(name, 0.0, requested, 0.0, 0.0, 0.0, (), {}, {}, 0,
                                     error=str(err)))
            continue
        results.append(_simulate(name, scheduler, acnsim, sessions, period_min=period_min,
                                 n_periods=n_periods, voltage_v=voltage_v,
                                 evse_max_a=evse_max_a, aggregate_limit_kw=aggregate_limit_kw,
                                 prices=import_price_per_kwh, ev_limits_known=ev_limits_known))
    return results


def _validate(sessions: Sequence[AcnSession], period_min: int, n_periods: int,
              voltage_v: float, evse_max_a: float, aggregate_limit_kw: float | None,
              prices: Sequence[float], algorithms: Sequence[str]) -> None:
    if period_min <= 0:
        raise ModelError("period_min", "must be > 0")
    if n_periods <= 0:
        raise ModelError("n_periods", "must be > 0")
    if not voltage_v > 0:
        raise ModelError("voltage_v", "must be > 0")
    if not evse_max_a > 0:
        raise ModelError("evse_max_a", "must be > 0")
    if aggregate_limit_kw is not None and not aggregate_limit_kw > 0:
        raise ModelError("aggregate_limit_kw", "must be > 0 (or None for no limit)")
    if len(prices) != n_periods:
        raise ModelError("import_price_per_kwh", f"has {len(prices)} prices for "
                         f"{n_periods} periods")
    if not all(math.isfinite(p) for p in prices):
        raise ModelError("import_price_per_kwh", "must be finite")
    for name in algorithms:
        if name not in ALGORITHMS:
            raise ModelError("algorithms", f"unknown {name!r} (known: {', '.join(ALGORITHMS)})")
    seen: set[str] = set()
    by_station: dict[str, list[AcnSession]] = {}
    for i, s in enumerate(sessions):
        field = f"sessions[{i}]"
        if s.session_id in seen:
            raise ModelError(f"{field}.session_id", f"duplicate {s.session_id!r}")
        seen.add(s.session_id)
        if not 0 <= s.arrival_period < s.departure_period <= n_periods:
            raise ModelError(f"{field}.departure_period", "need 0 <= arrival_period < "
                             f"departure_period <= n_periods ({n_periods})")
        if not (math.isfinite(s.energy_requested_kwh) and s.energy_requested_kwh >= 0):
            raise ModelError(f"{field}.energy_requested_kwh", "must be >= 0")
        if not (math.isfinite(s.max_charge_kw) and s.max_charge_kw > 0):
            raise ModelError(f"{field}.max_charge_kw", "must be > 0")
        by_station.setdefault(s.station_id, []).append(s)
    for station, group in by_station.items():  # ACN refuses a second EV at an EVSE
        group.sort(key=lambda s: s.arrival_period)
        for before, after in itertools.pairwise(group):
            if after.arrival_period < before.departure_period:
                raise ModelError("sessions", f"{before.session_id!r} and "
                                 f"{after.session_id!r} overlap at station {station!r}")


def _import_acn() -> tuple[Any, Any]:
    """acnportal's ``acnsim`` and ``algorithms`` modules, or ``AcnSimUnavailableError``."""
    _ensure_pkg_resources()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # setuptools 80's pkg_resources deprecation
            acnsim = importlib.import_module("acnportal.acnsim")
            acn_algorithms = importlib.import_module("acnportal.algorithms")
    except ImportError as err:
        raise AcnSimUnavailableError(
            f"the ACN-Sim bridge needs the package acnportal (pip install "
            f"'{ACNPORTAL_REQUIREMENT}'): {err}", name=err.name) from err
    return acnsim, acn_algorithms


def _ensure_pkg_resources() -> None:
    """Give acnportal 0.3.3 the one ``pkg_resources`` call it makes if setuptools lacks it.

    acnsim imports ``pkg_resources`` (gone from setuptools 81) only to read its own
    version when serialising a simulation; without this the import fails outright.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pkg_resources")
    except ImportError:
        shim = types.ModuleType("pkg_resources", "stand-in: require(name)[0].version only")
        shim.__dict__["require"] = lambda name: [
            types.SimpleNamespace(version=importlib.metadata.version(name))]
        sys.modules["pkg_resources"] = shim


def _scheduler(name: str, acn_algorithms: Any, round_robin_step_a: float) -> Any:
    """A fresh ACN scheduler for ``name`` (each holds its own interface)."""
    if name == "uncontrolled":
        return acn_algorithms.UncontrolledCharging()
    if name == "edf":
        return acn_algorithms.SortedSchedulingAlgo(acn_algorithms.earliest_deadline_first)
    if name == "llf":
        return acn_algorithms.SortedSchedulingAlgo(acn_algorithms.least_laxity_first)
    if name == "round_robin":
        return acn_algorithms.RoundRobin(acn_algorithms.first_come_first_served,
                                         continuous_inc=round_robin_step_a)
    # adaptive: ACN's MPC lives in the separate adacharge package (on cvxpy); not on PyPI,
    # so this branch is untested here: its arguments follow adacharge's own examples
    try:
        adacharge = importlib.import_module("adacharge")
    except ImportError as err:
        raise AcnSimUnavailableError(
            "adaptive needs adacharge (ACN's AdaptiveSchedulingAlgorithm, on cvxpy), "
            f"which is not published on PyPI: {err}", name="adacharge") from err
    objective = [adacharge.ObjectiveComponent(adacharge.quick_charge),
                 adacharge.ObjectiveComponent(adacharge.equal_share, 1e-12)]
    return adacharge.AdaptiveSchedulingAlgorithm(objective, max_recompute=1)


def _simulate(name: str, scheduler: Any, acnsim: Any, sessions: Sequence[AcnSession], *,
              period_min: int, n_periods: int, voltage_v: float, evse_max_a: float,
              aggregate_limit_kw: float | None, prices: Sequence[float],
              ev_limits_known: bool) -> AcnResult:
    """Build a fresh network and EVs (the simulator mutates them) and run one algorithm."""
    stations = sorted({s.station_id for s in sessions})
    network = acnsim.ChargingNetwork()
    for station in stations:
        network.register_evse(acnsim.EVSE(station, max_rate=evse_max_a), voltage_v, 0)
    if stations:  # ACN's sorted algorithms fail on a network without any constraint, so
        # without a limit add one that never binds (every EVSE at its maximum)
        limit_a = evse_max_a * len(stations) if aggregate_limit_kw is None \
            else aggregate_limit_kw * 1000 / voltage_v
        network.add_constraint(acnsim.Current(stations), limit_a, name="aggregate")
    evs = [acnsim.EV(s.arrival_period, s.departure_period, s.energy_requested_kwh,
                     s.station_id, s.session_id,
                     acnsim.Battery(s.energy_requested_kwh, 0, s.max_charge_kw))
           for s in sessions]
    events = acnsim.EventQueue([acnsim.PluginEvent(ev.arrival, ev) for ev in evs])
    interface = acnsim.Interface
    if ev_limits_known:
        interface = _limit_aware_interface(acnsim, {
            s.session_id: s.max_charge_kw * 1000 / voltage_v for s in sessions})
    simulator = acnsim.Simulator(network, scheduler, events, _EPOCH, period=period_min,
                                 verbose=False, interface_type=interface)
    try:
        with warnings.catch_warnings():
            # uncontrolled's pilots break the limit and ACN warns every period
            warnings.simplefilter("ignore")
            simulator.run()
    except Exception as err:
        if name != "adaptive":  # the stock algorithms are deterministic: a failure is a bug
            raise
        requested = sum(s.energy_requested_kwh for s in sessions)  # the MPC's solver failed
        return AcnResult(name, 0.0, requested, 0.0, 0.0, 0.0, (), {}, {}, 0,
                         error=f"{type(err).__name__}: {err}")
    return _result(name, simulator, sessions, stations, period_min=period_min,
                   n_periods=n_periods, voltage_v=voltage_v,
                   aggregate_limit_kw=aggregate_limit_kw, prices=prices)


def _limit_aware_interface(acnsim: Any, max_a: Mapping[str, float]) -> Any:
    """An ``Interface`` whose sessions carry the car's max current as ``max_rates``.

    Overrides acnportal 0.3.3's private ``Interface._active_sessions`` (hence ``<0.4``).
    """
    base = acnsim.Interface

    def _active_sessions(self: Any) -> Any:
        infos = base._active_sessions(self)
        for info in infos:
            info.max_rates = info.max_rates.clip(max=max_a[info.session_id])
        return infos

    return type("LimitAwareInterface", (base,), {"_active_sessions": _active_sessions})


def _result(name: str, simulator: Any, sessions: Sequence[AcnSession], stations: list[str], *,
            period_min: int, n_periods: int, voltage_v: float,
            aggregate_limit_kw: float | None, prices: Sequence[float]) -> AcnResult:
    """Figures from a finished simulation; actual draw (charging_rates), not pilots."""
    rates_a = simulator.charging_rates  # stations x iterations; runs to the last departure
    width = int(rates_a.shape[1])
    station_kw = {
        station: [float(rates_a[i, t]) * voltage_v / 1000 if t < width else 0.0
                  for t in range(n_periods)]
        for i, station in enumerate(stations)}
    session_power = {
        s.session_id: tuple(kw if s.arrival_period <= t < s.departure_period else 0.0
                            for t, kw in enumerate(station_kw[s.station_id]))
        for s in sessions}
    power = tuple(math.fsum(column) for column in zip(*station_kw.values(), strict=True)) \
        if station_kw else (0.0,) * n_periods
    period_h = period_min / 60
    delivered = {sid: float(ev.energy_delivered) for sid, ev in simulator.ev_history.items()}
    delivered_kwh = math.fsum(delivered.values())
    requested_kwh = math.fsum(s.energy_requested_kwh for s in sessions)
    over = 0 if aggregate_limit_kw is None else sum(
        1 for kw in power if kw > aggregate_limit_kw + _LIMIT_TOL_KW)
    return AcnResult(
        algorithm=name,
        energy_delivered_kwh=delivered_kwh,
        energy_requested_kwh=requested_kwh,
        energy_delivered_pct=100.0 * delivered_kwh / requested_kwh if requested_kwh > 0
        else 100.0,
        cost=math.fsum(kw * period_h * price for kw, price in zip(power, prices, strict=True)),
        peak_kw=max(power, default=0.0),
        power_kw=power,
        session_delivered_kwh={s.session_id: delivered.get(s.session_id, 0.0)
                               for s in sessions},
        session_power_kw=session_power,
        periods_over_limit=over,
    )
