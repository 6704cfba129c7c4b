"""``gridflex bench ocpp``: N stations connect at once and meter; how long until every one
of them has answered a new plan's SetChargingProfile.

gridflex's ``Csms`` and ``dispatch`` run in this process with an in-memory counting sink
(the ledger's own ingest rate is ``gridflex bench ledger``'s business); the stations run
in a child process (``adapters.ocpp.station_fleet``: lean stations, real OCPP-J through
the ``ocpp`` library, versions 1.6, 2.0.1 and 2.1 in turn), all opened at once, each
sending MeterValues every ``meter_interval_s``.  Per round, all under that meter load:

- ``baseline``: one ClearChargingProfile (of an id nobody has) to every station at
  once: the bare per-station round trip, no plan and no profile encoding;
- ``fanout``: a new Schedule for every EVSE, ``dispatch(verify=False)``, until every
  station answered its SetChargingProfile (the issue's definition);
- ``fanout_verify``: the same with ``verify=True``, the read-back (GetCompositeSchedule)
  dispatch does in service.

Each plan is dispatched with the one before as ``previous``, as the controller does
(decreases answered before increases go out).  Then a quiet period measures the meter
messages the sink received per second.  Every sample must reach the sink exactly once:
acknowledged messages x samples per message, no duplicates.  ``ratio_to_baseline`` is
fan-out p50 over baseline p50.  Both sides validate every message as gridflex does
(``adapters.ocpp.compat``: compiled schemas, the library deciding what they refuse);
``library_validation`` measures the library's validators alone (the row says which ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import pandas as pd

from adapters.ocpp import compat
from adapters.ocpp.csms import Csms, CsmsConfig, StationConfig
from adapters.ocpp.station_fleet import member
from aggregator.clock import floor_to
from aggregator.dispatch import dispatch
from aggregator.measure import percentile
from aggregator.model import Evse, MeterSample, OcppVersion, Schedule

BENCH = "ocpp"
EVSE_KW = 11.0
INTERVAL = timedelta(minutes=15)
NO_SUCH_PROFILE = 999_999  # the baseline clears this id: nobody has it


@dataclass(frozen=True)
class OcppBenchSettings:
    """One run: fleet size, rounds, the meter cadence and the plans' length."""

    stations: int = 200
    rounds: int = 5
    meter_interval_s: float = 5.0
    quiet_s: float = 10.0  # the meter-rate window
    horizon_intervals: int = 96
    periods: int = 24  # distinct periods per profile (the plan changes every hour)
    verify: bool = True
    library_validation: bool = False  # both sides: the ocpp library's validators alone
    seed: int = 7
    connect_timeout_s: float = 180.0
    response_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.stations <= 20_000:
            raise ValueError(f"stations must be in 1..20000, got {self.stations}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.meter_interval_s <= 0 or self.quiet_s <= 0:
            raise ValueError("meter_interval_s and quiet_s must be > 0")
        if not 1 <= self.periods <= self.horizon_intervals:
            raise ValueError(f"periods must be in 1..horizon_intervals "
                             f"({self.horizon_intervals}), got {self.periods}")


class CountingSink:
    """A meter sink that counts what it is handed: distinct samples and duplicates."""

    def __init__(self) -> None:
        self.keys: set[tuple[Any, ...]] = set()
        self.duplicates = 0

    @property
    def samples(self) -> int:
        return len(self.keys)

    async def put(self, samples: Sequence[MeterSample]) -> None:
        for sample in samples:
            if sample.key in self.keys:
                self.duplicates += 1
            self.keys.add(sample.key)


def fleet_config(settings: OcppBenchSettings,
                 prefix: str = "cs") -> tuple[CsmsConfig, dict[str, Evse]]:
    """The CSMS configuration for the child's stations (one EVSE each; A on 1.6 and 2.0.1,
    W on 2.1 as the e2e bench has it) and gridflex's view of their EVSEs."""
    stations, evses = [], {}
    for i in range(settings.stations):
        station_id, version, password = member(i, prefix)
        evse_id = f"{station_id}-1"
        stations.append(StationConfig(station_id, password, {1: evse_id},
                                      "W" if version == "2.1" else "A"))
        evses[evse_id] = Evse(evse_id, "site-1", EVSE_KW, ocpp_version=OcppVersion(version))
    return CsmsConfig(tuple(stations), response_timeout_s=settings.response_timeout_s), evses


def plan(evse_ids: Sequence[str], start: datetime, intervals: int, periods: int,
         rng: random.Random) -> Schedule:
    """A new plan for every EVSE: a seeded random power held for ``intervals / periods``
    intervals at a time, so each profile has up to ``periods`` periods (the shipped
    scenarios' plans have a median of 8 per 96 intervals at an office, 44 per 216 at a
    highway hub; ``periods == intervals`` is the largest message a plan can make)."""
    index = pd.date_range(start, periods=intervals, freq=INTERVAL, tz="UTC")
    power = pd.DataFrame({e: [level for level in (round(rng.uniform(4.2, EVSE_KW), 1)
                                                  for _ in range(periods))
                              for _ in range(intervals // periods)]
                          + [0.0] * (intervals % periods) for e in evse_ids}, index=index)
    return Schedule(power_kw=power, session_power_kw=power, soc=power * 0.0,
                    unmet_kwh=pd.Series(0.0, index=power.columns), interval=INTERVAL,
                    objective=0.0, status="bench", solver_stats={})


class Fleet:
    """The child process with the stations, spoken to over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, log: IO[str]) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, url: str, settings: OcppBenchSettings, log: IO[str]) -> Fleet:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adapters.ocpp.station_fleet", "--url", url,
            "--stations", str(settings.stations), "--seed", str(settings.seed),
            "--meter-interval-s", str(settings.meter_interval_s),
            "--timeout-s", str(settings.connect_timeout_s),
            *(["--library-validation"] if settings.library_validation else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            limit=64 * 1024 * 1024, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return cls(process, log)

    async def read(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The child's next line, which must be ``event``."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"the station fleet exited ({await self._exit()}): "
                               f"{self.log_tail()}")
        found: dict[str, Any] = json.loads(line)
        if found.get("event") != event:
            raise RuntimeError(f"the station fleet said {found.get('event')!r}, not {event!r}")
        return found

    async def stop(self, timeout_s: float) -> dict[str, Any]:
        """Stop metering; the child's final counts (it then closes every station)."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        report = await self.read("report", timeout_s)
        await asyncio.wait_for(self.process.wait(), timeout_s)
        return report

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def _exit(self) -> int:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), 5.0)
        return -1

    def log_tail(self, lines: int = 8) -> str:
        self.log.flush()
        self.log.seek(0)
        return " | ".join(self.log.read().splitlines()[-lines:])


@dataclass
class Rounds:
    """Seconds per measured fan-out, by kind, and what did not answer as it should."""

    times_s: dict[str, list[float]] = field(default_factory=dict)
    not_answered: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, bad: int) -> None:
        self.times_s.setdefault(kind, []).append(seconds)
        self.not_answered[kind] = self.not_answered.get(kind, 0) + bad


async def _timed(job: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await job()
    return time.perf_counter() - started, result


async def _fanout(csms: Csms, schedule: Schedule, evses: Mapping[str, Evse],
                  verify: bool, previous: Schedule | None) -> tuple[float, int]:
    """Seconds for one dispatch to every EVSE, and how many did not accept (or follow).
    With the plan in force as ``previous``, as the controller dispatches: decreases go
    out (and are answered) before increases."""
    seconds, deliveries = await _timed(functools.partial(dispatch, csms, schedule, evses,
                                                         verify=verify, previous=previous))
    return seconds, sum(1 for d in deliveries if d.status != "Accepted" or not d.follows)


async def _baseline(csms: Csms, station_ids: Sequence[str]) -> tuple[float, int]:
    """Seconds for one bare call (ClearChargingProfile) to every station at once."""
    async def clear_all() -> list[str]:
        return list(await asyncio.gather(*(csms.clear_charging_profile(s, NO_SUCH_PROFILE)
                                           for s in station_ids)))

    seconds, statuses = await _timed(clear_all)
    return seconds, sum(1 for status in statuses if status != "Unknown")


async def run_ocpp(settings: OcppBenchSettings,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """One run for one fleet size; the result row."""
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    config, evses = fleet_config(settings)
    station_ids = [s.station_id for s in config.stations]
    sink = CountingSink()
    csms = Csms(config, sink)
    port = await csms.start()
    rng = random.Random(settings.seed)
    with tempfile.TemporaryFile("w+") as log:
        fleet = await Fleet.start(f"ws://127.0.0.1:{port}", settings, log)
        try:
            opened = await fleet.read("connected", settings.connect_timeout_s + 30)
            connected = len(csms.connected)
            progress(f"  {opened['connected']}/{settings.stations} stations connected in "
                     f"{opened['connect_s']:.1f} s (the CSMS counts {connected})"
                     + (f"; failures: {opened['failures']}" if opened["failures"] else ""))
            if connected < settings.stations:
                raise RuntimeError(f"only {connected} of {settings.stations} stations "
                                   f"connected: {opened['failures']}")
            start = floor_to(datetime.now(UTC), INTERVAL)
            previous = plan(list(evses), start, settings.horizon_intervals, settings.periods,
                            rng)
            first_s, _ = await _fanout(csms, previous, evses, False, None)  # warm-up
            sent = 1
            rounds = Rounds()
            for k in range(settings.rounds):
                rounds.add("baseline", *await _baseline(csms, station_ids))
                kinds = [("fanout", False)] + ([("fanout_verify", True)] if settings.verify
                                                else [])
                for kind, verify in kinds:
                    schedule = plan(list(evses), start, settings.horizon_intervals,
                                    settings.periods, rng)
                    rounds.add(kind, *await _fanout(csms, schedule, evses, verify, previous))
                    previous = schedule
                    sent += 1
                progress(f"  round {k + 1}: " + ", ".join(
                    f"{kind} {times[-1]:.3f} s" for kind, times in rounds.times_s.items()))
            before, began = sink.samples, time.monotonic()
            await asyncio.sleep(settings.quiet_s)
            quiet_samples, quiet_s = sink.samples - before, time.monotonic() - began
            report = await fleet.stop(settings.connect_timeout_s)
        finally:
            await fleet.kill()
            await csms.stop()
    per_msg = int(report["samples_per_meter_msg"])
    answered_every_round = all(n == sent for n in report["profiles"].values()) and \
        len(report["profiles"]) == settings.stations and all(
            n == settings.rounds for n in report["clears"].values())
    return _row(settings, opened, connected, first_s, rounds, answered_every_round, report,
                sink, quiet_samples / per_msg / quiet_s, evses)


def _row(settings: OcppBenchSettings, opened: Mapping[str, Any], connected: int,
         first_s: float, rounds: Rounds, answered_every_round: bool,
         report: Mapping[str, Any], sink: CountingSink, meter_msgs_per_s: float,
         evses: Mapping[str, Evse]) -> dict[str, Any]:
    per_msg = int(report["samples_per_meter_msg"])
    times = rounds.times_s

    def q(kind: str, p: float) -> float | None:
        return round(percentile(times[kind], p), 4) if times.get(kind) else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    row: dict[str, Any] = {
        "bench": BENCH, "stations": settings.stations, "stations_connected": connected,
        "connect_s": opened["connect_s"],
        "versions": {v: sum(1 for e in evses.values() if e.ocpp_version.value == v)
                     for v in ("1.6", "2.0.1", "2.1")},
        "rounds": settings.rounds,
        "meter_msgs_per_s": round(meter_msgs_per_s, 1),
        "meter_expected_msgs_per_s": round(settings.stations / settings.meter_interval_s, 1),
        "fanout_p50_s": q("fanout", 50), "fanout_p99_s": q("fanout", 99),
        "fanout_verify_p50_s": q("fanout_verify", 50),
        "fanout_verify_p99_s": q("fanout_verify", 99),
        "baseline_p50_s": q("baseline", 50), "baseline_p99_s": q("baseline", 99),
        "first_fanout_s": round(first_s, 4),
        "not_answered": dict(rounds.not_answered),
        "answered_every_round": answered_every_round,
        "meter_msgs_sent": report["meter_sent"], "meter_msgs_acked": report["meter_acked"],
        "meter_samples_at_sink": sink.samples, "meter_duplicates_at_sink": sink.duplicates,
        "meter_exactly_once": sink.duplicates == 0 and report["meter_sent"] ==
        report["meter_acked"] and sink.samples == report["meter_acked"] * per_msg,
        "baseline": "clear-charging-profile", "sink": "memory",
        "validation": "library" if settings.library_validation else "compiled",
        "horizon_intervals": settings.horizon_intervals, "periods": settings.periods,
        "meter_interval_s": settings.meter_interval_s, "quiet_s": settings.quiet_s,
        "cpus": os.cpu_count()}
    row["ratio_to_baseline"] = ratio(row["fanout_p50_s"], row["baseline_p50_s"])
    row["ratio_to_baseline_p99"] = ratio(row["fanout_p99_s"], row["baseline_p99_s"])
    row["ratio_verify"] = ratio(row["fanout_verify_p50_s"], row["fanout_p50_s"])
    return row


def complete(row: Mapping[str, Any]) -> bool:
    """Every station connected and answered every round, every sample exactly once."""
    return "error" not in row and row["stations_connected"] == row["stations"] and \
        row["answered_every_round"] and not any(row["not_answered"].values()) and \
        row["meter_exactly_once"]


def bench_ocpp(sizes: Sequence[int], rounds: int, json_only: bool, *,
               meter_interval_s: float = 5.0, quiet_s: float | None = None,
               horizon_intervals: int = 96, periods: int = 24, verify: bool = True,
               library_validation: bool = False, seed: int = 7) -> int:
    """Run every fleet size; one JSON line each (and a table on stderr unless
    ``json_only``).  Returns 1 when a run failed or was not complete."""
    status = 0
    rows: list[dict[str, Any]] = []
    say: Callable[[str], None] = (lambda _: None) if json_only else functools.partial(
        print, file=sys.stderr, flush=True)
    for n in sizes:
        settings = OcppBenchSettings(
            stations=n, rounds=rounds, meter_interval_s=meter_interval_s,
            quiet_s=quiet_s if quiet_s is not None else 2 * meter_interval_s,
            horizon_intervals=horizon_intervals, periods=periods, verify=verify,
            library_validation=library_validation, seed=seed)
        say(f"gridflex bench ocpp: {n} stations, {rounds} rounds")
        try:
            with compat.library_validation() if settings.library_validation else \
                    contextlib.nullcontext():
                row = asyncio.run(run_ocpp(settings, say))
        except Exception as exc:  # one failed size must not hide the others
            row = {"bench": BENCH, "stations": n, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(row), flush=True)
        status = status or (0 if complete(row) else 1)
        rows.append(row)
    if not json_only:
        print(_table(rows), file=sys.stderr)
    return status


def _table(rows: Sequence[dict[str, Any]]) -> str:
    heads = {"fanout_p50_s": "fan-out p50 s", "fanout_p99_s": "p99 s",
             "fanout_verify_p50_s": "verify p50 s", "baseline_p50_s": "baseline p50 s",
             "ratio_to_baseline": "ratio", "meter_msgs_per_s": "meter msg/s"}
    lines = [f"{'stations':>8} {'connected':>9} " + " ".join(f"{h:>14}"
                                                            for h in heads.values())]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['stations']:>8} error: {row['error']}")
            continue
        cells = " ".join(f"{row[h]:>14.3f}" if isinstance(row[h], float) else f"{'-':>14}"
                         for h in heads)
        lines.append(f"{row['stations']:>8} {row['stations_connected']:>9} {cells}")
    return "\n".join(lines)
