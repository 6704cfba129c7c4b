"""``gridflex bench quality``: schedule quality beside Caltech's ACN-Sim algorithms.

One seeded instance, seen identically by both sides: sessions from
``aggregator.session_generator`` on one site of single-phase EVSEs (32 A at 208 V,
Caltech's ACN) under an aggregate import limit, 15-minute periods over 24 h and a
time-of-use import price (off-peak, morning shoulder, afternoon peak).  ACN-Sim runs its
algorithms (``acn-uncontrolled``, ``acn-edf``, ``acn-llf``, ``acn-round_robin``,
``acn-adaptive`` where adacharge installs) through ``aggregator.acn_sim``; gridflex runs
its LP, its MILP and its own rules (``gridflex-uncontrolled``, ``-edf``, ``-llf``,
``-round_robin``).  Every algorithm's schedule is scored by the same formulas: energy
delivered (per session at most its request), cost = sum of kW x period h x import price,
peak kW and periods over the limit.

What is made equal:
- sessions: each generated session is snapped to whole periods (arrival rounded up,
  departure down; the generator's minimum dwell of two periods keeps at least one) and
  both sides get those ``[arrival, departure)`` periods, the same request and the same
  car limit (ACN's ``ev_limits_known``); ``run_quality`` checks that ``build_problem``
  produced exactly these periods, targets, power bounds, prices and limit;
- the battery: ACN's ideal battery is lossless, so gridflex's sessions charge at
  efficiency 1 (delivered = drawn).  ACN's battery holds exactly the request and starts
  empty; gridflex's is the generated 60 kWh at its SoC with the request as target: the
  same, since charging past the target only costs (all prices are positive);
- the EVSEs: ACN's continuous EVSE has no minimum pilot, so gridflex's EVSEs have
  ``min_current_a = 0`` - except the MILP row (below).

What differs and cannot be removed (so read the rows with it):
- ACN's algorithms run online, period by period, without knowing future arrivals;
  gridflex's LP and MILP plan offline with every session known (an upper bound on what
  any online rule can do).  gridflex's rules run online too, like ACN's;
- only the LP and MILP see prices (ACN's stock algorithms and gridflex's rules ignore
  them; ACN's adaptive algorithm could, but is not installable from PyPI);
- ACN's sorted algorithms bisect the pilot to 0.01 A and its round robin hands out
  ``round_robin_step_a`` (0.1 A) steps capped by what is left, so they may leave a
  fraction of a step per session undelivered;
- ``acn-uncontrolled`` (and ``gridflex-uncontrolled``) ignore the limit: they break it,
  so they are never the "best ACN algorithm" of the check;
- ``gridflex-milp`` runs with a 6 A minimum current (J1772's minimum pilot), the only
  thing the MILP adds over the LP without V2G; its row shows what that costs.

The horizon starts at 06:00 California time, so arrivals are drawn 2.5 h after it
(08:30 local, ACN-Data's workplace mornings).  Some requests do not fit their stay even
at full power; the ``instance`` line's ``energy_deliverable_kwh`` is that ceiling.

Output: an ``instance`` line, one row per algorithm, the check ``lp_vs_best_acn`` (the
LP delivers at least what the best limit-respecting ACN algorithm delivers, and
re-solved to deliver exactly that algorithm's per-session energy it costs no more), then
the LP's unmet-energy-penalty sweep: with a penalty below the cheapest price the LP
rationally delivers nothing, between price tiers only what the cheaper periods can carry,
above the dearest price everything the limit allows.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from aggregator.acn_sim import ALGORITHMS, AcnResult, AcnSession, run_acn
from aggregator.model import (
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    ModelError,
    NodeKind,
    PriceSignal,
    Session,
)
from aggregator.planning import build_problem
from aggregator.scenario import PlanSettings, Scenario
from aggregator.session_generator import SessionGenerator, generate_sessions
from optimizer import solve
from optimizer.heuristics import solve_rule
from optimizer.problem import FlexProblem
from optimizer.solution import Solution

BENCH = "quality"
START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 06:00 in California (PST, UTC-8)
LOCAL_OFFSET = timedelta(hours=-8)
PERIOD_MIN = 15
N_PERIODS = 96
VOLTAGE_V = 208.0  # Caltech ACN: single-phase 208 V EVSEs
EVSE_MAX_A = 32.0
LIMIT_SHARE = 0.125  # aggregate limit as a share of the EVSEs' summed rating: it binds
ARRIVAL_MEAN_H = 2.5  # 08:30 local, ACN-Data's workplace arrivals (start is 06:00 local)
MILP_MIN_CURRENT_A = 6.0
MILP_TIME_LIMIT_S = 30.0
PENALTIES = (0.0, 0.1, 0.15, 0.25, 1.0, 10.0)
"""Unmet penalties of the sweep, per kWh: below, between and above the price tiers."""
GRIDFLEX_METHODS = ("lp", "milp", "uncontrolled", "edf", "llf", "round_robin")
TOL_KWH = 1e-6


def tou_price_per_kwh(moment: datetime) -> float:
    """Import price at ``moment`` (UTC) on a time-of-use tariff by California local hour.

    Off-peak 0.12 before 08:00 and from 21:00, shoulder 0.20 from 08:00 to 12:00 and
    18:00 to 21:00, peak 0.40 from 12:00 to 18:00 (the afternoon peak of the utilities'
    EV tariffs; illustrative prices).
    """
    hour = (moment + LOCAL_OFFSET).hour
    if 12 <= hour < 18:
        return 0.40
    if 8 <= hour < 12 or 18 <= hour < 21:
        return 0.20
    return 0.12


@dataclass(frozen=True)
class QualityInstance:
    """One bench instance in both models: gridflex's ``Scenario`` and ACN's sessions."""

    scenario: Scenario
    acn_sessions: tuple[AcnSession, ...]
    prices: tuple[float, ...]
    aggregate_limit_kw: float
    sessions_asked: int
    seed: int

    @property
    def energy_requested_kwh(self) -> float:
        return math.fsum(s.energy_requested_kwh for s in self.acn_sessions)

    @property
    def energy_deliverable_kwh(self) -> float:
        """What full power over each whole stay could deliver, ignoring the limit."""
        evse_kw = EVSE_MAX_A * VOLTAGE_V / 1000.0
        return math.fsum(
            min(s.energy_requested_kwh, min(s.max_charge_kw, evse_kw) * PERIOD_MIN / 60
                * (s.departure_period - s.arrival_period)) for s in self.acn_sessions)

    def with_settings(self, *, unmet_penalty_per_kwh: float | None = None,
                      min_current_a: float | None = None,
                      requests_kwh: dict[str, float] | None = None) -> Scenario:
        """The scenario with another penalty, EVSE minimum current or per-session requests."""
        scenario = self.scenario
        if unmet_penalty_per_kwh is not None:
            scenario = replace(scenario, settings=replace(
                scenario.settings, unmet_penalty_per_kwh=unmet_penalty_per_kwh))
        if min_current_a is not None:
            evses = tuple(replace(e, min_current_a=min_current_a) for e in scenario.tree.evses)
            scenario = replace(scenario, tree=GridTree(scenario.tree.nodes, evses))
        if requests_kwh is not None:
            scenario = replace(scenario, sessions=tuple(
                replace(s, energy_requested_kwh=requests_kwh[s.session_id])
                for s in scenario.sessions))
        return scenario


def build_instance(sessions: int = 60, seed: int = 0, *, evses: int | None = None,
                   aggregate_limit_kw: float | None = None) -> QualityInstance:
    """The seeded instance: ``sessions`` asked of the generator on ``evses`` EVSEs.

    ``evses`` defaults to ``sessions`` (then every session finds a free EVSE); the limit
    defaults to ``LIMIT_SHARE`` of the EVSEs' summed rating.
    """
    if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
        raise ModelError("sessions", f"must be an integer >= 1, got {sessions!r}")
    n_evses = sessions if evses is None else evses
    if isinstance(n_evses, bool) or not isinstance(n_evses, int) or n_evses < 1:
        raise ModelError("evses", f"must be an integer >= 1, got {n_evses!r}")
    step = timedelta(minutes=PERIOD_MIN)
    end = START + N_PERIODS * step
    evse_kw = EVSE_MAX_A * VOLTAGE_V / 1000.0
    limit_kw = LIMIT_SHARE * n_evses * evse_kw if aggregate_limit_kw is None \
        else aggregate_limit_kw
    if not (math.isfinite(limit_kw) and limit_kw > 0):
        raise ModelError("aggregate_limit_kw", f"must be > 0, got {limit_kw}")
    stations = tuple(Evse(f"evse-{i:03d}", "site", max_import_kw=evse_kw, phases=1,
                          voltage_v=VOLTAGE_V, min_current_a=0.0) for i in range(n_evses))
    generator = SessionGenerator(count=sessions, seed=seed, arrival_mean_h=ARRIVAL_MEAN_H,
                                 min_dwell_h=2 * PERIOD_MIN / 60)
    snapped: list[Session] = []
    acn: list[AcnSession] = []
    for s in generate_sessions(generator, stations, START, end):
        first = math.ceil((s.arrival - START) / step)
        last = math.floor((s.departure - START) / step)
        assert first < last, "a dwell of two periods always keeps one whole period"
        snapped.append(replace(s, arrival=START + first * step, departure=START + last * step,
                               charge_efficiency=1.0))
        assert s.energy_requested_kwh is not None
        acn.append(AcnSession(s.session_id, s.evse_id, first, last, s.energy_requested_kwh,
                              s.max_charge_kw))
    prices = tuple(tou_price_per_kwh(START + t * step) for t in range(N_PERIODS))
    scenario = Scenario(
        name=f"bench-quality-{sessions}-seed{seed}", start=START, interval=step,
        n_intervals=N_PERIODS,
        tree=GridTree((GridNode("site", NodeKind.SITE, name="ACN-like garage"),), stations),
        sessions=tuple(snapped),
        constraints=(GridConstraint("site", START, end, source="bench",
                                    source_ref="aggregate-limit", received_at=START,
                                    import_max_kw=limit_kw),),
        prices=tuple(PriceSignal(START + t * step, START + (t + 1) * step, price, 0.0,
                                 source="tou") for t, price in enumerate(prices)),
        settings=PlanSettings(),
        description="gridflex bench quality (aggregator.bench_quality)")
    return QualityInstance(scenario=scenario, acn_sessions=tuple(acn), prices=prices,
                           aggregate_limit_kw=limit_kw, sessions_asked=sessions, seed=seed)


def check_same_instance(problem: FlexProblem, instance: QualityInstance,
                        requests_kwh: Sequence[float] | None = None) -> None:
    """Raise ``RuntimeError`` unless gridflex's arrays describe ACN's instance exactly.

    ``requests_kwh`` replaces ACN's per-session requests (the re-solve of the check).
    """
    acn = instance.acn_sessions
    if requests_kwh is None:
        requests_kwh = [s.energy_requested_kwh for s in acn]
    found: list[str] = []
    if problem.session_names != tuple(s.session_id for s in acn):
        found.append("sessions")
    else:
        if not np.array_equal(problem.session_start, [s.arrival_period for s in acn]):
            found.append("arrival periods")
        if not np.array_equal(problem.session_end, [s.departure_period for s in acn]):
            found.append("departure periods")
        wish = problem.session_energy_target_kwh - problem.session_energy_initial_kwh
        if not np.allclose(wish, requests_kwh, rtol=0, atol=1e-9):
            found.append("requested energy")
        bound = np.minimum(problem.session_charge_max_kw,
                           problem.evse_import_max_kw[problem.session_evse].max(axis=1))
        acn_bound = [min(s.max_charge_kw, EVSE_MAX_A * VOLTAGE_V / 1000) for s in acn]
        if not np.allclose(bound, acn_bound, rtol=0, atol=1e-9):
            found.append("charge power bounds")
        if not np.all(problem.session_charge_efficiency == 1.0):
            found.append("charge efficiency")
    if not np.allclose(problem.import_price_per_kwh, instance.prices, rtol=0, atol=1e-12):
        found.append("prices")
    if not np.allclose(problem.node_import_max_kw, instance.aggregate_limit_kw, rtol=0,
                       atol=1e-9):
        found.append("aggregate limit")
    if found:
        raise RuntimeError("gridflex and ACN do not see the same instance: "
                           + ", ".join(found))


def _figures(instance: QualityInstance, charge_kw: np.ndarray[Any, Any],
             requested_kwh: Sequence[float]) -> dict[str, Any]:
    """Delivered, cost, peak and periods over the limit of a (session x period) schedule."""
    dt_h = PERIOD_MIN / 60
    delivered = np.minimum(charge_kw.sum(axis=1) * dt_h, np.asarray(requested_kwh, dtype=float))
    power = charge_kw.sum(axis=0) if charge_kw.size else np.zeros(N_PERIODS)
    return _row_figures(instance, math.fsum(delivered.tolist()), [float(x) for x in power])


def _row_figures(instance: QualityInstance, delivered_kwh: float,
                 power_kw: Sequence[float]) -> dict[str, Any]:
    requested = instance.energy_requested_kwh
    return {
        "energy_delivered_kwh": delivered_kwh,
        "energy_requested_kwh": requested,
        "energy_delivered_pct": 100.0 * delivered_kwh / requested if requested > 0 else 100.0,
        "cost": math.fsum(kw * PERIOD_MIN / 60 * price
                          for kw, price in zip(power_kw, instance.prices, strict=True)),
        "peak_kw": max(power_kw, default=0.0),
        "periods_over_limit": sum(1 for kw in power_kw
                                  if kw > instance.aggregate_limit_kw + 1e-6),
    }


def _gridflex(instance: QualityInstance, method: str, scenario: Scenario,
             requests_kwh: Sequence[float] | None = None) -> tuple[dict[str, Any], Solution]:
    """Plan ``scenario`` (``instance``'s, perhaps with other settings) with ``method``.

    Returns the row and the solution; ``requests_kwh`` are the scenario's per-session
    requests when they are not ACN's.
    """
    started = time.perf_counter()
    problem, _ = build_problem(scenario)
    check_same_instance(problem, instance, requests_kwh)
    if method == "uncontrolled":
        solution = solve_rule(problem, "uncontrolled")
    elif method == "milp":
        solution = solve(problem, method="milp", time_limit_s=MILP_TIME_LIMIT_S)
    elif method in ("lp", "edf", "llf", "round_robin"):
        solution = solve(problem, method=method)  # type: ignore[arg-type]
    else:
        raise ModelError("methods", f"unknown gridflex method {method!r}")
    run_s = time.perf_counter() - started
    requests = [s.energy_requested_kwh for s in instance.acn_sessions] \
        if requests_kwh is None else requests_kwh
    row = {"algorithm": f"gridflex-{method}", **_figures(instance, solution.charge_kw, requests),
           "run_s": round(run_s, 4), "status": solution.status,
           "min_current_a": scenario.tree.evses[0].min_current_a if scenario.tree.evses
           else 0.0}
    if method == "milp" and "gap_vs_lp" in solution.stats:
        row["gap_vs_lp"] = solution.stats["gap_vs_lp"]
    return row, solution


def _acn_row(instance: QualityInstance, result: AcnResult, run_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"algorithm": f"acn-{result.algorithm}"}
    if result.error is not None:
        row.update({"energy_delivered_kwh": 0.0,
                    "energy_requested_kwh": instance.energy_requested_kwh,
                    "energy_delivered_pct": 0.0, "cost": 0.0, "peak_kw": 0.0,
                    "periods_over_limit": 0, "run_s": round(run_s, 4), "status": "error",
                    "error": result.error})
        return row
    delivered = math.fsum(min(result.session_delivered_kwh[s.session_id],
                              s.energy_requested_kwh) for s in instance.acn_sessions)
    row.update(_row_figures(instance, delivered, result.power_kw))
    row.update({"run_s": round(run_s, 4), "status": "simulated", "min_current_a": 0.0})
    return row


def run_quality(sessions: int = 60, seed: int = 0, *, evses: int | None = None,
                aggregate_limit_kw: float | None = None,
                acn_algorithms: Sequence[str] = ALGORITHMS,
                gridflex_methods: Sequence[str] = GRIDFLEX_METHODS,
                penalties: Sequence[float] = PENALTIES,
                round_robin_step_a: float = 0.1) -> list[dict[str, Any]]:
    """Every row of the bench (see the module docstring), in print order.

    Each row carries ``bench``, ``sessions`` (generated and placed) and ``seed``.  The LP
    always runs (the check needs it); ``gridflex_methods`` adds the others.
    """
    instance = build_instance(sessions, seed, evses=evses,
                              aggregate_limit_kw=aggregate_limit_kw)
    common = {"bench": BENCH, "sessions": len(instance.acn_sessions), "seed": seed}
    rows: list[dict[str, Any]] = [{
        **common, "instance": instance.scenario.name, "sessions_asked": sessions,
        "evses": len(instance.scenario.tree.evses),
        "aggregate_limit_kw": instance.aggregate_limit_kw, "period_min": PERIOD_MIN,
        "n_periods": N_PERIODS, "voltage_v": VOLTAGE_V, "evse_max_a": EVSE_MAX_A,
        "energy_requested_kwh": instance.energy_requested_kwh,
        "energy_deliverable_kwh": instance.energy_deliverable_kwh,
        "price_min_per_kwh": min(instance.prices), "price_max_per_kwh": max(instance.prices),
        "round_robin_step_a": round_robin_step_a}]
    acn_rows: list[tuple[dict[str, Any], AcnResult]] = []
    for name in acn_algorithms:
        started = time.perf_counter()
        (result,) = run_acn(instance.acn_sessions, period_min=PERIOD_MIN, n_periods=N_PERIODS,
                            voltage_v=VOLTAGE_V, evse_max_a=EVSE_MAX_A,
                            aggregate_limit_kw=instance.aggregate_limit_kw,
                            import_price_per_kwh=instance.prices, algorithms=[name],
                            round_robin_step_a=round_robin_step_a)
        row = {**common, **_acn_row(instance, result, time.perf_counter() - started)}
        acn_rows.append((row, result))
        rows.append(row)
    methods = ["lp", *(m for m in gridflex_methods if m != "lp")]
    lp_row: dict[str, Any] = {}
    for method in methods:
        scenario = instance.with_settings(min_current_a=MILP_MIN_CURRENT_A) \
            if method == "milp" else instance.scenario
        row, _ = _gridflex(instance, method, scenario)
        row = {**common, **row}
        if method == "lp":
            lp_row = row
            row["unmet_penalty_per_kwh"] = scenario.settings.unmet_penalty_per_kwh
        rows.append(row)
    check = _lp_vs_best_acn(instance, lp_row, acn_rows)
    _ratios(rows, check.get("best_acn_algorithm"))
    rows.append({**common, **check})
    rows.extend({**common, **row} for row in _penalty_sweep(instance, penalties))
    return rows


def _ratios(rows: list[dict[str, Any]], baseline: str | None) -> None:
    """Each algorithm's cost and delivered energy over the baseline's, measured in the same
    run: the best ACN algorithm within the limit (the check's)."""
    base = next((row for row in rows if row.get("algorithm") == baseline), None)
    for row in rows:
        if base is None or "algorithm" not in row or "error" in row:
            continue
        row["baseline"] = baseline
        row["cost_ratio_to_baseline"] = (round(row["cost"] / base["cost"], 4)
                                         if base["cost"] else None)
        row["delivered_ratio_to_baseline"] = (
            round(row["energy_delivered_kwh"] / base["energy_delivered_kwh"], 4)
            if base["energy_delivered_kwh"] else None)


def _lp_vs_best_acn(instance: QualityInstance, lp_row: dict[str, Any],
                    acn_rows: Sequence[tuple[dict[str, Any], AcnResult]]) -> dict[str, Any]:
    """The check: LP delivers at least the best ACN algorithm's energy, at no higher cost.

    The best ACN algorithm delivers the most energy (then costs least) among those that ran
    and kept the limit.  ``lp_cost_same_delivery`` is the LP re-solved with each session
    asking exactly what that algorithm delivered to it: that algorithm's schedule is one
    the LP could choose, so the LP must find one at most as costly.
    """
    check: dict[str, Any] = {
        "check": "lp_vs_best_acn", "lp_delivered_pct": lp_row["energy_delivered_pct"],
        "lp_delivered_kwh": lp_row["energy_delivered_kwh"], "lp_cost": lp_row["cost"]}
    fair = [(row, result) for row, result in acn_rows
            if "error" not in row and row["periods_over_limit"] == 0]
    if not fair:
        check.update(best_acn_algorithm=None, ok=False,
                     note="no ACN algorithm ran within the limit")
        return check
    best_row, best = max(fair, key=lambda item: (round(item[0]["energy_delivered_kwh"], 6),
                                                 -item[0]["cost"]))
    requests = {s.session_id: min(best.session_delivered_kwh[s.session_id],
                                  s.energy_requested_kwh) for s in instance.acn_sessions}
    same, _ = _gridflex(instance, "lp", instance.with_settings(requests_kwh=requests),
                        list(requests.values()))
    tol = TOL_KWH * max(1.0, instance.energy_requested_kwh)
    delivers_more = lp_row["energy_delivered_kwh"] >= best_row["energy_delivered_kwh"] - tol
    same_delivered = same["energy_delivered_kwh"] >= math.fsum(requests.values()) - tol
    cheaper = same["cost"] <= best_row["cost"] + 1e-6 * max(1.0, abs(best_row["cost"]))
    check.update({
        "best_acn_algorithm": best_row["algorithm"],
        "best_acn_delivered_pct": best_row["energy_delivered_pct"],
        "best_acn_delivered_kwh": best_row["energy_delivered_kwh"],
        "best_acn_cost": best_row["cost"],
        "lp_cost_same_delivery": same["cost"],
        "lp_delivered_more_kwh": lp_row["energy_delivered_kwh"]
        - best_row["energy_delivered_kwh"],
        "saving_same_delivery_pct": 100.0 * (best_row["cost"] - same["cost"])
        / best_row["cost"] if best_row["cost"] > 0 else 0.0,
        "lp_within_limit": lp_row["periods_over_limit"] == 0,
        "ok": bool(delivers_more and same_delivered and cheaper
                   and lp_row["periods_over_limit"] == 0)})
    return check


def _penalty_sweep(instance: QualityInstance,
                   penalties: Sequence[float]) -> list[dict[str, Any]]:
    """The LP per unmet penalty, and one line judging the sweep.

    Expected: nothing delivered while the penalty is below the cheapest import price
    (charging costs more than leaving it), delivered energy never falling as the
    penalty rises, and above the dearest price the most the limit allows (the LP at the
    highest penalty of the sweep).
    """
    rows: list[dict[str, Any]] = []
    for penalty in sorted(penalties):
        row, solution = _gridflex(instance, "lp",
                                  instance.with_settings(unmet_penalty_per_kwh=penalty))
        rows.append({"check": "unmet_vs_penalty", "algorithm": "gridflex-lp",
                     "unmet_penalty_per_kwh": penalty,
                     "energy_delivered_kwh": row["energy_delivered_kwh"],
                     "energy_delivered_pct": row["energy_delivered_pct"],
                     "unmet_kwh": float(solution.unmet_kwh.sum()), "cost": row["cost"],
                     "periods_over_limit": row["periods_over_limit"], "run_s": row["run_s"]})
    if not rows:
        return rows
    tol = TOL_KWH * max(1.0, instance.energy_requested_kwh)
    delivered = [row["energy_delivered_kwh"] for row in rows]
    monotone = all(b >= a - tol for a, b in itertools.pairwise(delivered))
    cheapest, dearest = min(instance.prices), max(instance.prices)
    most = max(delivered)
    below = [row for row in rows if row["unmet_penalty_per_kwh"] < cheapest]
    above = [row for row in rows if row["unmet_penalty_per_kwh"] > dearest]
    none_below = all(row["energy_delivered_kwh"] <= tol for row in below)
    all_above = all(row["energy_delivered_kwh"] >= most - tol for row in above)
    rows.append({"check": "penalty_sweep", "monotone": monotone,
                 "nothing_below_cheapest_price": none_below,
                 "most_above_dearest_price": all_above,
                 "ok": monotone and none_below and all_above})
    return rows


def bench_quality(sessions: int = 60, seed: int = 0, json_only: bool = False, *,
                  evses: int | None = None, round_robin_step_a: float = 0.1) -> int:
    """Print every row as a JSON line (and a table on stderr unless ``json_only``).

    Returns 1 when a check failed (the LP below the best ACN algorithm, or over the
    limit, or a penalty sweep that is not monotone), else 0.
    """
    rows = run_quality(sessions, seed, evses=evses, round_robin_step_a=round_robin_step_a)
    for row in rows:
        print(json.dumps(row), flush=True)
    if not json_only:
        print(_table(rows), file=sys.stderr)
    return 0 if all(row["ok"] for row in rows if "ok" in row) else 1


def _table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'algorithm':<22} {'delivered %':>11} {'cost':>9} {'peak kW':>8} "
             f"{'over':>5} {'run s':>7}"]
    for row in rows:
        if "algorithm" in row and "check" not in row:
            note = f"  {row['error'][:60]}" if "error" in row else ""
            lines.append(f"{row['algorithm']:<22} {row['energy_delivered_pct']:>11.2f} "
                         f"{row['cost']:>9.2f} {row['peak_kw']:>8.1f} "
                         f"{row['periods_over_limit']:>5} {row['run_s']:>7.2f}{note}")
        elif row.get("check") == "unmet_vs_penalty":
            lines.append(f"{'lp penalty ' + format(row['unmet_penalty_per_kwh'], 'g'):<22} "
                         f"{row['energy_delivered_pct']:>11.2f} {row['cost']:>9.2f}")
        elif "check" in row:
            lines.append(f"check {row['check']}: {'ok' if row['ok'] else 'FAILED'}")
    return "\n".join(lines)
