"""Benchmarks behind ``gridflex bench``; every result is a JSON line.

``optimizer``: build and solve times of the direct, pyomo and MILP paths.  Each (size,
path) runs in a fresh process so ``peak_rss_mb`` is its own and a slow pyomo build can be
stopped at the time limit; the ratios compare paths on the same instance in the same run.
``ledger``: batched ingest rate and settlement time per database backend.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue as queue_module
import resource
import time
from datetime import datetime, timedelta
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

    Yields batches of ``MeterSample``s in meter-time order per EVSE.
    """
    import numpy as np

    from aggregator.fleet import FLEET_START
    from aggregator.model import Measurand, MeterSample

    def reading(evse: int, tx: str, moment: datetime, measurand: Measurand,
                value_wh: float) -> MeterSample:
        return MeterSample(station_id=f"CS{evse // 2}", evse_number=evse % 2 + 1,
                           transaction_id=tx, measured_at=moment, measurand=measurand,
                           value=value_wh, received_at=moment)

    rng = np.random.default_rng(7)
    pending: list[MeterSample] = []
    start = FLEET_START.replace(hour=0)
    for evse in range(n_evses):
        exports = rng.random() < 0.4
        import_wh = export_wh = 0.0
        for day in range(days):
            for session, (first_min, last_min) in enumerate(((480, 1020), (1080, 1860))):
                tx = f"e{evse}-d{day}-s{session}"
                for minute in range(first_min, min(last_min, 1440 * days - 1440 * day)):
                    moment = start + timedelta(days=day, minutes=minute)
                    import_wh += float(rng.uniform(0.0, 190.0))
                    pending.append(reading(evse, tx, moment, Measurand.ENERGY_IMPORT, import_wh))
                    if exports:
                        export_wh += float(rng.uniform(0.0, 40.0))
                        pending.append(reading(evse, tx, moment, Measurand.ENERGY_EXPORT,
                                               export_wh))
                    if len(pending) >= batch:
                        yield pending
                        pending = []
    if pending:
        yield pending


def bench_ledger(urls: dict[str, str], *, n_evses: int, days: int, batch: int) -> int:
    """One JSON line per backend: batched ingest rate and settlement time for the data."""
    from aggregator.ledger import Ledger, settle_sessions

    for backend, url in urls.items():
        ledger = Ledger(url)
        stored, ingest_s = 0, 0.0
        for samples in ledger_readings(n_evses, days, batch):
            started = time.perf_counter()  # time the ledger, not the data generator
            stored += ledger.add_samples(samples)
            ingest_s += time.perf_counter() - started
        from aggregator.fleet import FLEET_START
        start = FLEET_START.replace(hour=0)
        started = time.perf_counter()
        sessions = settle_sessions(ledger, start, start + timedelta(days=days))
        settle_s = time.perf_counter() - started
        print(json.dumps({
            "bench": "ledger", "backend": backend, "evses": n_evses, "days": days,
            "batch": batch, "samples": stored,
            "ingest_samples_per_s": round(stored / ingest_s, 1) if ingest_s else None,
            "settle_s": round(settle_s, 3), "sessions_settled": len(sessions),
            "settled_kwh": round(sum(s.imported_kwh for s in sessions), 3),
            **({"settle_month_1000_evse_s": round(settle_s, 3)}
               if n_evses >= 1000 and days >= 30 else {}),
        }), flush=True)
        ledger.engine.dispose()
    return 0
