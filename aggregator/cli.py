"""``gridflex``: the command line (solve, demo, bench)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from aggregator.model import ModelError
from aggregator.scenario_file import ScenarioError, load_scenario

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_SCENARIO = REPO_ROOT / "scenarios" / "office-evening-cap.yaml"


def _solve_scenario(path: Path, out_dir: Path, *, milp: bool, time_limit_s: float | None,
                    as_json: bool) -> int:
    from aggregator.planning import build_problem, to_schedule
    from aggregator.report import format_summary, write_outputs
    from optimizer import solve

    try:
        scenario = load_scenario(path)
        problem, index = build_problem(scenario)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModelError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 2
    solution = solve(problem, method="milp" if milp else "auto", time_limit_s=time_limit_s)
    schedule = to_schedule(solution, problem, index)
    summary = write_outputs(scenario, schedule, out_dir)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print(format_summary(summary))
        print(f"\nwrote {out_dir}/schedule.csv, schedule.parquet, summary.json, node_load.png")
    return 0 if solution.ok and summary["cap_violations"] == 0 else 1


def _settle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Per session over --from/--to (never netted; with --meter-keys, signature verdicts),
    or one DR event per interval against its baseline (--event)."""
    if args.event is not None:
        return _settle_event(args, parser)
    from aggregator.export import settlement_table, write_table
    from aggregator.ledger import Ledger, settle_sessions
    from aggregator.model import parse_utc
    from aggregator.session_journal import record_settlement

    if args.start is None or args.end is None:
        parser.error("--from and --to are required (or --event ID)")
    moments = []
    for name, value in (("--from", args.start), ("--to", args.end)):
        try:
            moments.append(parse_utc(value, name))
        except ValueError as err:
            parser.error(str(err))
    start, end = moments
    if end <= start:
        parser.error("--to must be after --from")
    ledger = Ledger(args.ledger)
    sessions = settle_sessions(ledger, start, end, max_gap_s=args.max_gap)
    signed: dict[str, object] = {}
    if args.meter_keys is not None:
        from aggregator.signed_meter import (
            MeterKeyError,
            check_sessions,
            load_meter_keys,
            signed_session_table,
        )
        try:
            registry = load_meter_keys(args.meter_keys)
        except MeterKeyError as err:
            parser.error(f"--meter-keys: {err}")
        signatures = check_sessions(ledger, start, end, registry)
        table = signed_session_table(sessions, signatures)
        signed = {"signed_readings": sum(s.signed_readings for s in signatures),
                  "verified": sum(s.verified for s in signatures),
                  "failed": sum(len(s.failed) for s in signatures),
                  "sessions_with_page_gaps": sum(1 for s in signatures if s.page_gaps),
                  "unknown_meters": sorted({m for s in signatures for m in s.unknown_meters})}
    else:
        table = settlement_table(sessions)
    out = _out_file(args, f"settlement-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}")
    write_table(table, out)
    run_id = record_settlement(
        ledger, "sessions", table, period=(start, end),
        params={"max_gap_s": args.max_gap, "meter_keys": None if args.meter_keys is None
                else str(args.meter_keys), "file": str(out)})
    seal = table["row_hash"].iloc[-1] if len(table) else "(no sessions)"
    print(json.dumps({"sessions": len(table), "imported_kwh": round(float(
        table["imported_kwh"].sum()), 3) if len(table) else 0.0, "exported_kwh": round(float(
        table["exported_kwh"].sum()), 3) if len(table) else 0.0,
        "flagged_sessions": int(((table["resets"] > 0) | (table["gaps"] > 0)).sum())
        if len(table) else 0, **signed, "file": str(out), "last_row_hash": seal,
        "run_id": run_id}))
    return 0


def _settle_event(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import re
    from datetime import timedelta

    from aggregator.event_settlement import SettlementError, event_table, settle_event
    from aggregator.export import write_table
    from aggregator.ledger import Ledger
    from aggregator.service_config import ServiceConfigError, load_service_config
    from aggregator.session_journal import record_settlement

    if args.config is None:
        parser.error("--event needs --config (its grid tree says which EVSEs are below "
                     "the event's nodes)")
    if args.start is not None or args.end is not None:
        parser.error("--event settles the event's own window: leave out --from and --to")
    try:
        config = load_service_config(args.config)
    except ServiceConfigError as err:
        parser.error(f"--config: {err}")
    ledger = Ledger(args.ledger)
    try:
        settled = settle_event(ledger, args.event, config, baseline=args.baseline,
                               source=args.source, interval=timedelta(minutes=args.interval),
                               max_gap_s=args.max_gap, price_per_kwh=args.price)
    except SettlementError as err:
        print(f"gridflex settle: {err}", file=sys.stderr)
        return 2
    table = event_table(settled)
    out = _out_file(args, "settlement-event-" + re.sub(r"[^A-Za-z0-9._-]", "_", args.event))
    write_table(table, out)
    run_id = record_settlement(
        ledger, "event", table, period=(settled.event.start, settled.event.end),
        event=(settled.event.source, settled.event.event_id,
               settled.event.modification_number),
        params={"baseline": settled.baseline, "source": args.source,
                "interval_min": args.interval, "max_gap_s": args.max_gap,
                "price_per_kwh": args.price, "config": str(args.config), "file": str(out)})
    print(json.dumps({
        "run_id": run_id,
        "event": settled.event.event_id, "modification": settled.event.modification_number,
        "earlier_modifications": [e.modification_number for e in settled.earlier],
        "baseline": settled.baseline, "nodes": list(settled.nodes),
        "evses": list(settled.evse_ids), "intervals": len(table),
        "flagged_intervals": settled.flagged_intervals,
        "delivered_kwh": round(settled.delivered_kwh, 3), "value": round(settled.value, 4),
        "excluded_days": list(settled.excluded_days), "file": str(out),
        "last_row_hash": table["row_hash"].iloc[-1] if len(table) else "(no intervals)"}))
    return 0


def _counts(text: str) -> list[int] | None:
    """A benchmark's comma-separated sizes (``--sessions 100,1000``), each at least 1;
    None when that is not what ``text`` holds."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return None
    return counts if counts and min(counts) >= 1 else None


def _out_file(args: argparse.Namespace, stem: str) -> Path:
    """--out, or ``stem.FORMAT``; a Parquet file always ends in .parquet."""
    out: Path = args.out or Path(f"{stem}.{args.format}")
    if args.format == "parquet" and out.suffix != ".parquet":
        out = out.with_suffix(".parquet")
    return out


def _live_demo(out: Path, speed: float, hours: float, *, as_json: bool) -> int:
    import asyncio
    import logging

    from aggregator.demo import DemoSettings, format_summary, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if not (speed > 0 and 1.5 <= hours <= 24):
        print("error: --speed must be > 0 and --hours in 1.5..24", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr if as_json else sys.stdout, flush=True)

    summary = asyncio.run(run_demo(DemoSettings(out_dir=out, speed=speed, hours=hours),
                                   progress))
    if as_json:
        print(json.dumps(summary))
    else:
        print()
        print(format_summary(summary))
        for violation in summary["violations"]:
            print(f"  violation: {violation}")
    return 0 if summary["cap_violations"] == 0 else 1


def _replay(path: Path, strategy: str | None, step_minutes: int | None, horizon: int | None,
            out_dir: Path, *, as_json: bool) -> int:
    """Replay a scenario file (its ``replay:`` section, overridden by the options given);
    KPIs on stdout, the tables as Parquet in ``out_dir``."""
    from dataclasses import replace
    from datetime import timedelta

    from aggregator.replay import replay
    from aggregator.replay_file import load_replay
    from aggregator.scenario_file import ScenarioError

    try:
        run = load_replay(path)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = run.settings
    if strategy is not None:
        settings = replace(settings, strategy=strategy)  # type: ignore[arg-type]
    if step_minutes is not None:
        settings = replace(settings, step=timedelta(minutes=step_minutes))
    if horizon is not None:
        settings = replace(settings, horizon_intervals=horizon)
    try:
        result = replay(replace(run, settings=settings))
    except (ValueError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = result.write(out_dir)
    if as_json:
        print(json.dumps(result.kpis))
    else:
        width = max(len(k) for k in result.kpis)
        for key, value in result.kpis.items():
            print(f"{key:<{width}}  {value}")
        print(f"tables: {', '.join(str(p) for p in written)}")
    return 0 if result.kpis["cap_violations"] == 0 else 1


def _serve(path: Path, log_level: str) -> int:
    """Run the service until SIGTERM or SIGINT, then stop cleanly (no sample lost)."""
    import asyncio
    import logging
    import signal

    from aggregator.service import Service
    from aggregator.service_config import load_service_config

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_service_config(path)
    except ModelError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Service(config).run(stop)

    asyncio.run(run())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridflex", description=(
        "Grid-integration flexibility aggregator for EV charging: DSO limits in, "
        "optimal charging and V2G schedules out."))
    commands = parser.add_subparsers(dest="command", required=True)

    solve_cmd = commands.add_parser("solve", help="schedule a scenario file (YAML or JSON)")
    solve_cmd.add_argument("scenario", type=Path)
    solve_cmd.add_argument("--out", type=Path, default=Path("out"),
                           help="folder for schedule.csv/.parquet, summary.json, node_load.png")
    solve_cmd.add_argument("--milp", action="store_true",
                           help="minimum current and no simultaneous charge/discharge (MILP)")
    solve_cmd.add_argument("--time-limit", type=float, default=None, metavar="S",
                           help="solver time limit in seconds")
    solve_cmd.add_argument("--json", action="store_true", help="print the summary as JSON")

    demo_cmd = commands.add_parser("demo", help="the live end-to-end demo on 127.0.0.1: "
                                   "three DSOs, 20 OCPP stations, an evening in about a minute")
    demo_cmd.add_argument("--out", type=Path, default=Path("out/demo"))
    demo_cmd.add_argument("--json", action="store_true",
                          help="progress on stderr, one JSON summary line on stdout")
    demo_cmd.add_argument("--speed", type=float, default=300.0,
                          help="simulated seconds per real second")
    demo_cmd.add_argument("--hours", type=float, default=6.0, help="simulated hours from 16:00")
    demo_cmd.add_argument("--offline", action="store_true",
                          help="instead: solve the shipped scenario file offline")

    settle_cmd = commands.add_parser(
        "settle", help="energy per session from the ledger, or one DR event against its "
                       "baseline")
    settle_cmd.add_argument("--ledger", required=True, metavar="URL",
                            help="sqlite:///FILE or a postgresql+psycopg:// URL")
    settle_cmd.add_argument("--from", dest="start", default=None, metavar="UTC",
                            help="period start, ISO 8601 with offset (sessions)")
    settle_cmd.add_argument("--to", dest="end", default=None, metavar="UTC")
    settle_cmd.add_argument("--format", choices=("csv", "parquet"), default="csv")
    settle_cmd.add_argument("--out", type=Path, default=None,
                            help="file to write (default: settlement-FROM-TO.FORMAT or "
                                 "settlement-event-ID.FORMAT)")
    settle_cmd.add_argument("--max-gap", type=float, default=900.0, metavar="S",
                            help="longer steps between readings are flagged as gaps")
    settle_cmd.add_argument("--meter-keys", type=Path, default=None, metavar="FILE",
                            help="sessions: verify signed (OCMF) meter values against this "
                                 "registry of meter public keys (TOML or JSON) and add "
                                 "signature columns")
    settle_cmd.add_argument("--event", default=None, metavar="ID",
                            help="settle one DR event from the journal (its latest "
                                 "modification) per interval instead of sessions")
    settle_cmd.add_argument("--config", type=Path, default=None, metavar="FILE",
                            help="with --event: the service TOML whose grid tree says which "
                                 "EVSEs are below the event's nodes")
    settle_cmd.add_argument("--baseline", choices=("ten_in_ten", "meter_before", "meter_after"),
                            default="ten_in_ten", help="with --event: the baseline method")
    settle_cmd.add_argument("--interval", type=int, default=15, metavar="MIN",
                            help="with --event: settlement interval in minutes")
    settle_cmd.add_argument("--price", type=float, default=None, metavar="PER_KWH",
                            help="with --event: the price of intervals the event carries "
                                 "none for")
    settle_cmd.add_argument("--source", default=None, metavar="LINK",
                            help="with --event: the DSO link that sent it (openadr, "
                                 "ieee2030_5) when several journaled that id")

    replay_cmd = commands.add_parser(
        "replay", help="replay a scenario through the live controller on a simulated clock")
    replay_cmd.add_argument("scenario", type=Path)
    replay_cmd.add_argument("--strategy", default=None,
                            choices=("uncontrolled", "edf", "llf", "round_robin", "lp", "milp"),
                            help="uncontrolled: every EV at full power, no control "
                                 "(default: the file's replay.strategy, else lp)")
    replay_cmd.add_argument("--step-minutes", type=int, default=None,
                            help="station and meter step; must divide the interval "
                                 "(default: replay.step_minutes, else 5)")
    replay_cmd.add_argument("--horizon", type=int, default=None, metavar="INTERVALS",
                            help="the controller's look-ahead (default: "
                                 "replay.horizon_intervals, else 32)")
    replay_cmd.add_argument("--out", type=Path, default=Path("out/replay"),
                            help="directory for the Parquet tables")
    replay_cmd.add_argument("--json", action="store_true", help="print the KPIs as JSON")

    sweep_cmd = commands.add_parser(
        "sweep", help="replay a scenario under every combination of parameter values, on Dask")
    sweep_cmd.add_argument("scenario", type=Path)
    sweep_cmd.add_argument("--param", action="append", default=[], required=True,
                           metavar="NAME=v1,v2",
                           help="a dotted path into the scenario file (replay.strategy, "
                                "settings.unmet_penalty_per_kwh, nodes[0].import_max_kw) and "
                                "its values; repeat for a cartesian product")
    sweep_cmd.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                           help="a running Dask scheduler (default: a LocalCluster)")
    sweep_cmd.add_argument("--workers", type=int, default=2,
                           help="LocalCluster worker processes")
    sweep_cmd.add_argument("--serial", action="store_true",
                           help="no Dask: replay the variants one after another here")
    sweep_cmd.add_argument("--out", type=Path, default=Path("out/sweep"),
                           help="directory for sweep.parquet")
    sweep_cmd.add_argument("--json", action="store_true",
                           help="one JSON line per variant (parameters and KPIs)")

    serve_cmd = commands.add_parser("serve", help="run the aggregator service")
    serve_cmd.add_argument("--config", type=Path, required=True, metavar="FILE",
                           help="service configuration (TOML); see scenarios/service.example.toml")
    serve_cmd.add_argument("--log-level", default="INFO",
                           choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    bench_cmd = commands.add_parser("bench", help="benchmarks (machine-readable output)")
    benches = bench_cmd.add_subparsers(dest="bench", required=True)
    opt = benches.add_parser("optimizer", help="direct HiGHS build vs pyomo, per fleet size")
    opt.add_argument("--sessions", default="100,1000,5000,10000",
                     help="comma-separated fleet sizes")
    opt.add_argument("--paths", default="direct,pyomo",
                     help="comma-separated: direct (auto method), monolithic (one LP), pyomo, "
                          "milp (fix-and-solve, 120 s limit)")
    opt.add_argument("--pyomo-limit", type=float, default=120.0, metavar="S",
                     help="stop the pyomo path at the first size slower than this")
    opt.add_argument("--seed", type=int, default=1)
    opt.add_argument("--json", action="store_true", help="JSON lines only")

    led = benches.add_parser("ledger", help="ledger ingest rate and settlement time")
    led.add_argument("--sqlite", default=None, metavar="FILE",
                     help="SQLite file to use (default: a fresh temporary file)")
    led.add_argument("--postgres", default=None, metavar="URL",
                     help="also measure PostgreSQL at this SQLAlchemy URL (use an empty "
                          "database: the bench writes its own tables)")
    led.add_argument("--skip-sqlite", action="store_true",
                     help="measure only the --postgres database")
    led.add_argument("--evses", type=int, default=1000)
    led.add_argument("--days", type=int, default=30)
    led.add_argument("--batch", type=int, default=5000)
    led.add_argument("--json", action="store_true", help="JSON lines only (always)")

    iec = benches.add_parser("iec61850", help="latency from a changed DESE.ChaPwrLim on a "
                             "real IED to the limit in force in the constraint book")
    iec.add_argument("--modes", default="report,poll",
                     help="comma-separated: report (needs pyiec61850-ng), poll")
    iec.add_argument("--samples", type=int, default=50)
    iec.add_argument("--poll-interval", type=float, default=1.0, metavar="S")
    iec.add_argument("--integrity-period", type=float, default=10.0, metavar="S")
    iec.add_argument("--seed", type=int, default=61850)
    iec.add_argument("--json", action="store_true", help="JSON lines only")

    ocpp_bench = benches.add_parser(
        "ocpp", help="N OCPP stations (a child process) connect at once and meter; fan-out "
                     "of a new plan until every station answered SetChargingProfile, against "
                     "a bare ClearChargingProfile fan-out in the same run")
    ocpp_bench.add_argument("--stations", default="2000",
                            help="comma-separated fleet sizes (one run each), e.g. 200,2000")
    ocpp_bench.add_argument("--rounds", type=int, default=5, help="measured rounds per size")
    ocpp_bench.add_argument("--meter-interval", type=float, default=5.0, metavar="S",
                            help="each station sends MeterValues this often")
    ocpp_bench.add_argument("--quiet", type=float, default=None, metavar="S",
                            help="the meter-rate window (default: twice the meter interval)")
    ocpp_bench.add_argument("--horizon", type=int, default=96, metavar="INTERVALS",
                            help="plan length in 15-minute intervals")
    ocpp_bench.add_argument("--periods", type=int, default=24,
                            help="distinct periods per profile (= --horizon: one per interval)")
    ocpp_bench.add_argument("--no-verify", action="store_true",
                            help="skip the read-back rounds (dispatch verify=True)")
    ocpp_bench.add_argument("--library-validation", action="store_true",
                            help="validate messages (both sides) with the ocpp library's "
                                 "validators alone, not gridflex's compiled schemas in front")
    ocpp_bench.add_argument("--seed", type=int, default=7)
    ocpp_bench.add_argument("--json", action="store_true", help="JSON lines only")

    sep2 = benches.add_parser("ieee2030_5", help="IEEE 2030.5 client: a full discovery walk "
                              "and one poll cycle for N sites against the loopback server")
    sep2.add_argument("--sites", default="1,100,1000",
                      help="comma-separated site counts (one run each)")
    sep2.add_argument("--page-size", type=int, default=50, help="list page size (s/l), 1..255")
    sep2.add_argument("--concurrency", type=int, default=None,
                      help="requests in flight (default: the client's 8)")
    sep2.add_argument("--latency-ms", type=float, default=0.0,
                      help="delay every server answer (a wide-area round trip)")
    sep2.add_argument("--no-state-file", action="store_true",
                      help="run the client without its state file")
    sep2.add_argument("--json", action="store_true", help="JSON lines only")

    e2e = benches.add_parser("e2e", help="DSO event at a real OpenADR VTN until every "
                             "station has accepted its new profile (gridflex serve in its "
                             "own process), against an operator re-plan as the baseline")
    e2e.add_argument("--stations", default="100",
                     help="comma-separated fleet sizes (one run each), e.g. 20,200,2000")
    e2e.add_argument("--rounds", type=int, default=5, help="rounds of each kind per size")
    e2e.add_argument("--poll-interval", type=float, default=1.0, metavar="S",
                     help="the VEN's OpenADR poll interval (>= 1)")
    e2e.add_argument("--horizon", type=int, default=96, metavar="INTERVALS",
                     help="planning horizon in 15-minute intervals")
    e2e.add_argument("--method", default="auto",
                     choices=("auto", "lp", "milp", "decomposed", "edf", "llf", "round_robin"))
    e2e.add_argument("--seed", type=int, default=7)
    e2e.add_argument("--json", action="store_true", help="JSON lines only")

    quality = benches.add_parser("quality", help="ACN-Sim's algorithms vs gridflex's LP and "
                                                 "MILP on the same sessions and limits")
    quality.add_argument("--sessions", type=int, default=60)
    quality.add_argument("--evses", type=int, default=None,
                         help="EVSEs (default: one per session)")
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--json", action="store_true", help="JSON lines only")

    args = parser.parse_args(argv)
    if args.command == "solve":
        return _solve_scenario(args.scenario, args.out, milp=args.milp,
                               time_limit_s=args.time_limit, as_json=args.json)
    if args.command == "demo" and args.offline:
        return _solve_scenario(DEMO_SCENARIO, args.out, milp=False, time_limit_s=None,
                               as_json=args.json)
    if args.command == "demo":
        return _live_demo(args.out, args.speed, args.hours, as_json=args.json)
    if args.command == "settle":
        return _settle(args, parser)
    if args.command == "replay":
        return _replay(args.scenario, args.strategy, args.step_minutes, args.horizon, args.out,
                       as_json=args.json)
    if args.command == "sweep":
        from aggregator.sweep import sweep_main
        return sweep_main(args.scenario, args.param, scheduler=args.scheduler,
                          workers=args.workers, serial=args.serial, out_dir=args.out,
                          as_json=args.json)
    if args.command == "serve":
        return _serve(args.config, args.log_level)
    if args.command == "bench" and args.bench == "optimizer":
        from aggregator.bench import bench_optimizer
        sizes = _counts(args.sessions)
        paths = [v.strip() for v in args.paths.split(",") if v.strip()]
        unknown = set(paths) - {"direct", "monolithic", "pyomo", "milp"}
        if unknown or sizes is None:
            parser.error(f"bad --paths {sorted(unknown)} or --sessions")
        return bench_optimizer(sizes, paths, pyomo_limit_s=args.pyomo_limit, seed=args.seed,
                               json_only=args.json)
    if args.command == "bench" and args.bench == "ledger":
        import tempfile

        from aggregator.bench import bench_ledger
        if args.evses < 1 or args.days < 1 or args.batch < 1:
            parser.error("--evses, --days and --batch must be >= 1")
        if args.skip_sqlite and not args.postgres:
            parser.error("--skip-sqlite needs --postgres")
        urls = {}
        if not args.skip_sqlite:
            sqlite_file = args.sqlite or str(Path(tempfile.mkdtemp()) / "bench-ledger.db")
            urls["sqlite"] = f"sqlite:///{sqlite_file}"
        if args.postgres:
            urls["postgresql"] = args.postgres
        return bench_ledger(urls, n_evses=args.evses, days=args.days, batch=args.batch)
    if args.command == "bench" and args.bench == "e2e":
        from aggregator.bench_e2e import bench_e2e

        sizes = _counts(args.stations)
        if sizes is None:
            print(f"error: --stations: comma-separated integers, got {args.stations!r}",
                  file=sys.stderr)
            return 2
        return bench_e2e(sizes, args.rounds, args.json, poll_interval_s=args.poll_interval,
                         horizon_intervals=args.horizon, method=args.method, seed=args.seed)
    if args.command == "bench" and args.bench == "iec61850":
        from aggregator.bench_iec61850 import bench_iec61850
        if args.samples < 1 or args.poll_interval <= 0 or args.integrity_period <= 0:
            parser.error("--samples, --poll-interval and --integrity-period must be > 0")
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        return bench_iec61850(modes, args.samples, args.json,
                              poll_interval_s=args.poll_interval,
                              integrity_period_s=args.integrity_period, seed=args.seed)
    if args.command == "bench" and args.bench == "ocpp":
        from aggregator.bench_ocpp import bench_ocpp
        sizes = _counts(args.stations)
        if sizes is None:
            parser.error(f"bench ocpp: --stations: comma-separated integers, got "
                         f"{args.stations!r}")
        try:
            return bench_ocpp(sizes, args.rounds, args.json,
                              meter_interval_s=args.meter_interval, quiet_s=args.quiet,
                              horizon_intervals=args.horizon, periods=args.periods,
                              verify=not args.no_verify,
                              library_validation=args.library_validation, seed=args.seed)
        except ValueError as err:
            parser.error(f"bench ocpp: {err}")
    if args.command == "bench" and args.bench == "ieee2030_5":
        from aggregator.bench_ieee2030_5 import bench_ieee2030_5
        sites = _counts(args.sites)
        if sites is None:
            parser.error(f"bench ieee2030_5: --sites: comma-separated integers, got "
                         f"{args.sites!r}")
        try:
            return bench_ieee2030_5(sites, args.json, page_size=args.page_size,
                                    concurrency=args.concurrency,
                                    state_file=not args.no_state_file,
                                    latency_ms=args.latency_ms)
        except ValueError as err:
            parser.error(f"bench ieee2030_5: {err}")
    if args.command == "bench" and args.bench == "quality":
        from aggregator.bench_quality import bench_quality
        if args.sessions < 1 or (args.evses is not None and args.evses < 1):
            parser.error("--sessions and --evses must be >= 1")
        return bench_quality(args.sessions, args.seed, json_only=args.json, evses=args.evses)
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
