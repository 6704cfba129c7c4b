"""Benchmarks behind ``gridflex bench``; every result is a JSON line.

``optimizer``: build and solve times of the direct, pyomo and MILP paths.  Each (size,
path) runs in a fresh process so ``peak_rss_mb`` is its own and a slow pyomo build can be
stopped at the time limit; the ratios compare paths on the same instance in the same run.
``ledger``: batched ingest rate and settlement time per database backend (buckets for the
whole period, against the raw-window query on the first day in the same run).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue as queue_module
import resource
import time
from datetime import timedelta
from typing import Any

TIME_LIMIT_GRACE_S = 30.0
MILP_LIMIT_S = 120.0


def _run_case(sessions: int, path: str, seed: int, limit_s: float | None,
              queue: Any) -> None:
    """Child process: generate the fleet, solve it on ``path``, report one result."""
    from aggregator.fleet import generate_fleet
    from aggregator.planning import build_problem
    from optimizer import solve, solve_lp

    scenario = generate_fleet(sessions, seed=seed)
    problem, _ = build_problem(scenario)
    started = time.perf_counter()
    if path == "pyomo":
        from optimizer.pyomo_model import solve_pyomo
        solution = solve_pyomo(problem, time_limit_s=limit_s)
    elif path == "monolithic":
        solution = solve_lp(problem)
    elif path == "milp":
        solution = solve(problem, method="milp", time_limit_s=MILP_LIMIT_S)
    else:
        solution = solve(problem)
    total_s = time.perf_counter() - started
    rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    stats = solution.stats
    wanted = ("iterations", "blocks", "cols", "rows", "rel_gap", "gap_vs_lp", "lp_bound",
              "neighbourhood", "binaries")
    extra: dict[str, Any] = {key: stats[key] for key in wanted if key in stats}
    result: dict[str, Any] = {
        "bench": "optimizer", "sessions": sessions, "path": path,
        "method": stats.get("method", "lp"),
        "evses": problem.n_evses, "sites": len(set(problem.evse_node.tolist())),
        "intervals": problem.n_intervals,
        "build_s": round(float(stats.get("build_s", float("nan"))), 4),
        "solve_s": round(float(stats.get("solve_s", float("nan"))), 4),
        "total_s": round(total_s, 4),
        "peak_rss_mb": round(rss_kb / 1024.0, 1),
        "objective": solution.objective, "status": solution.status,
        **extra,
    }
    queue.put(result)


def run_case(sessions: int, path: str, seed: int, limit_s: float | None) -> dict[str, Any]:
    """One measurement in a spawned process; a run past the limit is stopped and reported."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case, args=(sessions, path, seed, limit_s, queue))
    started = time.perf_counter()
    proc.start()
    deadline = None if limit_s is None else started + limit_s + TIME_LIMIT_GRACE_S
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=0.5)
            proc.join()
            return result
        except queue_module.Empty:
            timed_out = deadline is not None and time.perf_counter() > deadline
            if proc.is_alive() and not timed_out:
                continue
            proc.terminate()
            proc.join(5)
            return {"bench": "optimizer", "sessions": sessions, "path": path,
                    "status": "timeout" if timed_out else "crashed",
                    "total_s": round(time.perf_counter() - started, 1),
                    "note": f"stopped after the {limit_s} s limit" if timed_out
                    else f"child exited with code {proc.exitcode}"}


def compare(direct: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Ratios of ``other`` (pyomo or monolithic) over ``direct`` on the same instance."""
    rel = abs(other["objective"] - direct["objective"]) / max(1.0, abs(direct["objective"]))
    name = other["path"]
    return {"bench": "optimizer", "sessions": direct["sessions"], "compare": f"{name}/direct",
            f"build_ratio_{name}_over_direct": round(
                other["build_s"] / max(direct["build_s"], 1e-6), 2),
            f"total_ratio_{name}_over_direct": round(
                other["total_s"] / max(direct["total_s"], 1e-6), 2),
            "objective_rel_diff": rel}


def bench_optimizer(sizes: list[int], paths: list[str], *, pyomo_limit_s: float, seed: int,
                    json_only: bool) -> int:
    """Run every size on every path and print JSON lines (and a short table)."""
    pyomo_stopped_at: int | None = None
    rows: list[dict[str, Any]] = []
    for sessions in sizes:
        results: dict[str, dict[str, Any]] = {}
        for path in paths:
            result: dict[str, Any]
            if path == "pyomo" and pyomo_stopped_at is not None:
                result = {"bench": "optimizer", "sessions": sessions, "path": "pyomo",
                          "status": "skipped",
                          "note": f"pyomo exceeded {pyomo_limit_s} s at {pyomo_stopped_at} "
                                  "sessions; larger sizes not run"}
            else:
                result = run_case(sessions, path, seed,
                                  pyomo_limit_s if path == "pyomo" else None)
                if path == "pyomo" and (result["status"] in ("timeout", "crashed") or
                                        float(result.get("total_s", 0.0)) > pyomo_limit_s):
                    pyomo_stopped_at = sessions
            results[path] = result
            rows.append(result)
            print(json.dumps(result), flush=True)
        direct = results.get("direct")
        if direct is not None and "objective" in direct:
            for name in ("pyomo", "monolithic"):
                other = results.get(name)
                if other is not None and "objective" in other and "build_s" in other:
                    comparison = compare(direct, other)
                    rows.append(comparison)
                    print(json.dumps(comparison), flush=True)
    if not json_only:
        print()
        print(f"{'sessions':>9} {'path':>11} {'build_s':>9} {'solve_s':>9} {'total_s':>9} "
              f"{'rss_mb':>8}  status")
        for row in rows:
            if "path" in row:
                print(f"{row['sessions']:>9} {row['path']:>11} {row.get('build_s', ''):>9} "
                      f"{row.get('solve_s', ''):>9} {row.get('total_s', ''):>9} "
                      f"{row.get('peak_rss_mb', ''):>8}  {row['status']}")
    return 0


def ledger_readings(n_evses: int, days: int, batch: int) -> Any:
    """Seeded one-minute register readings: two sessions a day per EVSE, 40 % also export.

    Yields batches of ``batch`` ``MeterSample``s (the last may be shorter) in meter-time
    order per EVSE.  Increments are drawn per session with numpy and the minute timestamps
    are built once, so a month of 1,000 EVSEs (~55M samples) is generated in minutes.
    """
    import numpy as np

    from aggregator.fleet import FLEET_START
    from aggregator.model import Measurand, MeterSample

    rng = np.random.default_rng(7)
    start = FLEET_START.replace(hour=0)
    moments = [start + timedelta(minutes=minute) for minute in range(1440 * days + 1860)]
    pending: list[MeterSample] = []
    for evse in range(n_evses):
        station, number = f"CS{evse // 2}", evse % 2 + 1
        exports = bool(rng.random() < 0.4)
        import_wh = export_wh = 0.0
        for day in range(days):
            for session, (first_min, last_min) in enumerate(((480, 1020), (1080, 1860))):
                tx = f"e{evse}-d{day}-s{session}"
                minutes = range(1440 * day + first_min,
                                1440 * day + min(last_min, 1440 * days - 1440 * day))
                imports = (import_wh + np.cumsum(rng.uniform(0.0, 190.0, len(minutes)))).tolist()
                import_wh = imports[-1] if imports else import_wh
                registers = [(Measurand.ENERGY_IMPORT, imports)]
                if exports:
                    values = (export_wh + np.cumsum(rng.uniform(0.0, 40.0, len(minutes)))).tolist()
                    export_wh = values[-1] if values else export_wh
                    registers.append((Measurand.ENERGY_EXPORT, values))
                for position, minute in enumerate(minutes):
                    moment = moments[minute]
                    for measurand, series in registers:
                        pending.append(MeterSample(
                            station_id=station, evse_number=number, transaction_id=tx,
                            measured_at=moment, measurand=measurand, value=series[position],
                            received_at=moment))
                while len(pending) >= batch:
                    yield pending[:batch]
                    del pending[:batch]
    if pending:
        yield pending


def _timed(call: Any, *args: Any) -> tuple[Any, float]:
    """``call(*args)`` and its wall time in seconds."""
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


def bench_ledger(urls: dict[str, str], *, n_evses: int, days: int, batch: int) -> int:
    """One JSON line per backend: batched ingest rate and settlement time for the data.

    Settlement of the whole period reads the hourly buckets kept at ingest.  The same-run
    baseline is the pre-bucket query (one window over every register sample in the
    ledger, whatever the period) settling the first day, against the buckets on that day.
    """
    from aggregator.fleet import FLEET_START
    from aggregator.ledger import Ledger, settle_sessions, settle_sessions_raw

    start = FLEET_START.replace(hour=0)
    first_day = (start, start + timedelta(days=1))
    for backend, url in urls.items():
        ledger = Ledger(url)
        stored, ingest_s = 0, 0.0
        for samples in ledger_readings(n_evses, days, batch):
            started = time.perf_counter()  # time the ledger, not the data generator
            stored += ledger.add_samples(samples)
            ingest_s += time.perf_counter() - started
            if stored // 5_000_000 != (stored - len(samples)) // 5_000_000:
                _progress(backend, f"{stored} samples stored, {stored / ingest_s:.0f}/s")
        sessions, settle_s = _timed(settle_sessions, ledger, start,
                                    start + timedelta(days=days))
        day, settle_day_s = _timed(settle_sessions, ledger, *first_day)
        _progress(backend, f"{stored} samples at {stored / max(ingest_s, 1e-9):.0f}/s; "
                           f"settled in {settle_s:.3f} s; raw baseline next")
        raw_day, settle_raw_s = _timed(settle_sessions_raw, ledger, *first_day)
        print(json.dumps({
            "bench": "ledger", "backend": backend, "evses": n_evses, "days": days,
            "batch": batch, "samples": stored, "ingest_s": round(ingest_s, 3),
            "ingest_samples_per_s": round(stored / ingest_s, 1) if ingest_s else None,
            "settle_s": round(settle_s, 3), "sessions_settled": len(sessions),
            "settled_kwh": round(sum(s.imported_kwh for s in sessions), 3),
            **({"settle_month_1000_evse_s": round(settle_s, 3)}
               if n_evses >= 1000 and days >= 30 else {}),
            "settle_day_s": round(settle_day_s, 3), "settle_raw_s": round(settle_raw_s, 3),
            "raw_over_buckets_first_day": round(settle_raw_s / max(settle_day_s, 1e-6), 1),
            "raw_first_day_over_buckets_whole_period": round(
                settle_raw_s / max(settle_s, 1e-6), 2),
            "first_day_matches_raw": _same_energies(day, raw_day),
            "baseline": "settle_raw_s: the pre-bucket raw-window query (windows every "
                        "register sample in the ledger) settling the first day; "
                        "settle_day_s: the buckets settling the same day",
        }), flush=True)
        ledger.engine.dispose()
    return 0


def _progress(backend: str, message: str) -> None:
    """A progress note on stderr (stdout carries only the JSON lines)."""
    import sys

    print(f"bench ledger {backend}: {message}", file=sys.stderr, flush=True)


def _same_energies(ours: list[Any], reference: list[Any]) -> bool:
    """Same sessions, counts and times; energies equal up to float summation order."""
    import math

    def exact(session: Any) -> tuple[Any, ...]:
        return (session.station_id, session.evse_number, session.transaction_id,
                session.evse_id, session.first_reading, session.last_reading,
                session.readings, session.resets, session.gaps)

    return len(ours) == len(reference) and all(
        exact(a) == exact(b) and math.isclose(a.imported_kwh, b.imported_kwh, rel_tol=1e-9,
                                              abs_tol=1e-9)
        and math.isclose(a.exported_kwh, b.exported_kwh, rel_tol=1e-9, abs_tol=1e-9)
        for a, b in zip(ours, reference, strict=False))
