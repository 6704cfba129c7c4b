"""``gridflex bench e2e``: from a DSO event at a real OpenADR VTN until every station has
accepted its new profile.

One run per fleet size.  An openleadr VTN (the DSO) and N simulated OCPP stations (1.6,
2.0.1 and 2.1, some V2G; real OCPP-J clients) run in this process; gridflex runs as an
operator runs it, ``gridflex serve`` in its own process, with a configuration written for
the fleet.  Every station plugs an EV in; once the fleet is planned and the service idle,
the bench alternates two kinds of round:

- ``dso-event``: a SIMPLE event for the feeder is added at the VTN; the VEN polls it, the
  constraint book changes, the controller re-plans and dispatches to every station;
- ``operator-replan`` (the baseline, measured in the same run on the same stations):
  ``POST /replan`` on the operator API, the same solve and dispatch without the DSO link.

A round ends when every station has accepted a profile sent after the round began; its
latency is that last acceptance, as the stations saw it.  ``ratio_to_baseline`` is the
event p50 over the replan p50: what the DSO link adds.  The service's plan journal splits
each round into its parts (VTN to book, solve, dispatch) and shows any plan the round did
not cause (``stray_plans``, which would make the round's figure doubtful).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aggregator.clock import floor_to
from aggregator.controller import METHODS
from aggregator.measure import free_port, percentile

BENCH = "e2e"
PROGRAM = "oadr://bench/feeder-dr"
FEEDER = "feeder-1"
SITE_SIZE = 50  # stations per site (connection point)
EVSE_KW = 11.0
LEVEL_SHARE = {1: 0.5, 2: 0.3}  # SIMPLE level -> feeder cap as a share of the fleet's kW
VERSIONS = ("1.6", "2.0.1", "2.1")
INTERVAL = timedelta(minutes=15)


@dataclass(frozen=True)
class E2eSettings:
    """One bench run: fleet size, rounds of each kind, and how gridflex is configured."""

    stations: int = 100
    rounds: int = 5
    poll_interval_s: float = 1.0  # the VEN's OpenADR poll (openleadr pulls; no push)
    horizon_intervals: int = 96
    method: str = "auto"
    debounce_s: float = 0.2
    seed: int = 7
    round_timeout_s: float = 300.0
    quiet_s: float = 1.0  # no acceptance for this long (and an idle controller) = settled

    def __post_init__(self) -> None:
        if not 1 <= self.stations <= 10_000:
            raise ValueError(f"stations must be in 1..10000, got {self.stations}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.poll_interval_s < 1.0:
            raise ValueError("poll_interval_s must be >= 1 (the VEN's minimum)")
        if self.method not in METHODS:
            raise ValueError(f"method: one of {', '.join(METHODS)}, got {self.method!r}")


@dataclass(frozen=True)
class FleetMember:
    """One simulated station with one EVSE, and the EV that plugs into it."""

    station_id: str
    version: str
    site: str
    v2g: bool
    capacity_kwh: float
    soc: float
    energy_kwh: float
    dwell: timedelta


def fleet(settings: E2eSettings) -> list[FleetMember]:
    """The stations: sites of ``SITE_SIZE`` under one feeder, versions mixed, a third of
    the 2.1 stations V2G; EVs with seeded battery sizes, SoC, energy wishes and dwell."""
    rng = random.Random(settings.seed)
    members = []
    for i in range(settings.stations):
        version = VERSIONS[i % len(VERSIONS)]
        v2g = version == "2.1" and (i // len(VERSIONS)) % 3 == 0
        members.append(FleetMember(
            station_id=f"cs-{i + 1:05d}", version=version, site=f"site-{i // SITE_SIZE + 1:03d}",
            v2g=v2g, capacity_kwh=rng.choice((40.0, 58.0, 64.0, 77.0)),
            soc=rng.uniform(0.45, 0.75) if v2g else rng.uniform(0.15, 0.5),
            energy_kwh=round(rng.uniform(6.0, 30.0), 1),
            dwell=timedelta(hours=rng.uniform(4.0, 10.0))))
    return members


def service_config(settings: E2eSettings, members: Sequence[FleetMember], *, vtn_url: str,
                   ocpp_port: int, api_port: int, workdir: Path) -> dict[str, Any]:
    """The ``gridflex serve`` configuration (as a TOML table) for the fleet."""
    fleet_kw = EVSE_KW * len(members)
    sites = sorted({m.site for m in members})
    return {
        "service": {"ledger_url": f"sqlite:///{workdir / 'ledger.db'}",
                    "api_host": "127.0.0.1", "api_port": api_port},
        "controller": {"interval_s": int(INTERVAL.total_seconds()),
                       "horizon_intervals": settings.horizon_intervals,
                       "debounce_s": settings.debounce_s,
                       "period_s": 3600.0,  # no timer plans inside a round
                       "method": settings.method, "time_limit_s": 60.0},
        "plan": {"default_import_price_per_kwh": 0.25},
        "nodes": [{"id": "dso", "kind": "area"},
                  {"id": FEEDER, "kind": "feeder", "parent": "dso"},
                  *({"id": site, "kind": "site", "parent": FEEDER} for site in sites)],
        "safe_defaults": [{"source": "openadr", "node": FEEDER,
                           "import_max_kw": round(0.8 * fleet_kw, 1)}],
        "ocpp": {"host": "127.0.0.1", "port": ocpp_port, "stations": [
            {"id": m.station_id, "password": f"pw-{m.station_id}", "version": m.version,
             "rate_unit": "W" if m.version == "2.1" else "A",
             "evses": [{"number": 1, "id": f"{m.station_id}-1", "node": m.site,
                        "max_import_kw": EVSE_KW, "max_export_kw": EVSE_KW if m.v2g else 0.0,
                        "v2g": m.v2g}]} for m in members]},
        "openadr": {"vtn_url": vtn_url, "ven_name": "gridflex-bench",
                    "state_file": str(workdir / "ven-state.json"),
                    "poll_interval_s": settings.poll_interval_s, "default_nodes": [FEEDER],
                    "programs": {PROGRAM: {
                        "mandatory": True,
                        "simple_levels_kw": {str(level): round(share * fleet_kw, 1)
                                             for level, share in LEVEL_SHARE.items()}}}},
    }


class Acceptances:
    """When each station accepted each profile (monotonic seconds, as the station saw it),
    and a wait for "every station has accepted one since ..."."""

    def __init__(self, station_ids: Sequence[str]) -> None:
        self.times: dict[str, list[float]] = {s: [] for s in station_ids}
        self._waiting: set[str] = set()
        self._all = asyncio.Event()

    def record(self, station_id: str) -> None:
        self.times[station_id].append(time.monotonic())
        if station_id in self._waiting:
            self._waiting.discard(station_id)
            if not self._waiting:
                self._all.set()

    def arm(self) -> float:
        """Start waiting for every station; returns the monotonic start."""
        self._waiting = set(self.times)
        self._all.clear()
        return time.monotonic()

    async def wait_all(self, timeout_s: float) -> int:
        """Wait until every station accepted since ``arm``; returns how many did not."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all.wait(), timeout_s)
        return len(self._waiting)

    def first_since(self, start_s: float) -> list[float]:
        """Per station, seconds from ``start_s`` to its first acceptance after it."""
        found = []
        for times in self.times.values():
            later = [t for t in times if t > start_s]
            if later:
                found.append(later[0] - start_s)
        return found

    def last(self) -> float:
        return max((t[-1] for t in self.times.values() if t), default=0.0)


@dataclass
class Round:
    """One measured round."""

    kind: str  # "dso-event" or "operator-replan"
    marker: str  # the event id, or "operator"
    issued_at: datetime
    issued_s: float
    missing: int = 0
    station_s: list[float] = field(default_factory=list)

    @property
    def all_s(self) -> float | None:
        return None if self.missing or not self.station_s else max(self.station_s)


class ServiceProcess:
    """``gridflex serve --config FILE`` in its own process, its log in the work dir."""

    def __init__(self, config_path: Path, api_port: int, log_path: Path) -> None:
        self.api_port = api_port
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", "serve", "--config", str(config_path),
             "--log-level", "WARNING"], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def get(self, path: str) -> Any:
        import aiohttp

        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{self.api_port}{path}") as response:
            response.raise_for_status()
            return await response.json()

    async def post(self, path: str) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as http, \
                http.post(f"http://127.0.0.1:{self.api_port}{path}") as response:
            response.raise_for_status()

    async def wait_healthy(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gridflex serve exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(Exception):
                health: dict[str, Any] = await self.get("/health")
                return health
            if time.monotonic() > deadline:
                raise RuntimeError(f"gridflex serve did not answer /health: {self.log_tail()}")
            await asyncio.sleep(0.2)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as an operator stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return " | ".join(self.log_path.read_text().splitlines()[-lines:])


async def run_e2e(settings: E2eSettings, workdir: Path,
                  progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One run: returns one result row per round kind (dso-event first)."""
    import tomli_w

    from adapters.ocpp.simulator import SimEv, SimEvse, SimStation
    from adapters.openadr.vtn import Interval, LoopbackVtn

    # openleadr sets INFO on import, and warns about every future SIMPLE event it corrects
    logging.getLogger("openleadr").setLevel(logging.ERROR)
    began = time.monotonic()
    members = fleet(settings)
    vtn = LoopbackVtn(port=free_port(),
                      poll_interval=timedelta(seconds=settings.poll_interval_s))
    with contextlib.redirect_stdout(io.StringIO()):  # openleadr prints a banner
        await vtn.start()
    ocpp_port, api_port = free_port(), free_port()
    config_path = workdir / "service.toml"
    config_path.write_text(tomli_w.dumps(service_config(
        settings, members, vtn_url=vtn.url, ocpp_port=ocpp_port, api_port=api_port,
        workdir=workdir)))
    service = ServiceProcess(config_path, api_port, workdir / "service.log")
    accepted = Acceptances([m.station_id for m in members])
    stations = [SimStation(m.station_id, m.version, f"pw-{m.station_id}",  # type: ignore[arg-type]
                           {1: SimEvse(EVSE_KW, EVSE_KW if m.v2g else 0.0)},
                           on_accept=functools.partial(_accepted, accepted, m.station_id),
                           response_timeout_s=60.0)
                   for m in members]
    rounds: list[Round] = []
    try:
        await service.wait_healthy(60.0)
        url = f"ws://127.0.0.1:{ocpp_port}"
        await _in_batches([s.connect(url) for s in stations])
        deadline = time.monotonic() + 60
        while not vtn.vens:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the VEN did not register: {service.log_tail()}")
            await asyncio.sleep(0.1)
        ven_id = next(iter(vtn.vens))
        now = datetime.now(UTC)
        start = accepted.arm()
        await _in_batches([s.plug_in(1, SimEv(
            battery_capacity_kwh=m.capacity_kwh, soc=m.soc, departure=now + m.dwell,
            max_charge_kw=EVSE_KW, energy_requested_kwh=m.energy_kwh,
            max_discharge_kw=EVSE_KW if m.v2g else 0.0, min_soc=0.4 if m.v2g else 0.0),
            f"TAG-{m.station_id}") for s, m in zip(stations, members, strict=True)])
        missing = await accepted.wait_all(settings.round_timeout_s)
        if missing:
            raise RuntimeError(f"{missing} stations got no profile after plugging in")
        setup_s = time.monotonic() - began
        progress(f"  {len(members)} stations connected and charging, planned in "
                 f"{time.monotonic() - start:.1f} s (setup {setup_s:.1f} s)")
        first_window = floor_to(datetime.now(UTC), INTERVAL) + INTERVAL
        for k in range(settings.rounds):
            for kind in ("operator-replan", "dso-event"):
                await _settle(service, accepted, settings)
                fire: Callable[[], Awaitable[None]]
                if kind == "dso-event":
                    marker = f"bench-dr-{k + 1:04d}"  # no id a prefix of another
                    window = first_window + k * INTERVAL  # each event a new cap somewhere
                    event = (ven_id, marker, "SIMPLE", "level",
                             [Interval(window, INTERVAL, float(1 + k % 2))])
                    fire = functools.partial(_add_event, vtn, event)
                else:
                    marker = "operator"
                    fire = functools.partial(service.post, "/replan")
                rounds.append(await _round(kind, marker, fire, accepted, settings))
                last = rounds[-1]
                progress(f"  round {k + 1} {kind}: "
                         + (f"all {len(members)} accepted in {last.all_s:.2f} s"
                            if last.all_s is not None else f"{last.missing} stations missing"))
        journal = (await service.get(f"/plans?limit={4 * settings.rounds + 50}"))["plans"]
        # the journal's answers say what each station answered; a measured round must
        # rest on a plan every station accepted
        rows = _rows(settings, rounds, journal, setup_s)
    finally:
        await _in_batches([s.close() for s in stations])
        code = service.stop()
        await vtn.stop()
    if code != 0:
        raise RuntimeError(f"gridflex serve exited with {code} on SIGTERM: {service.log_tail()}")
    return rows


async def _add_event(vtn: Any, event: tuple[Any, ...]) -> None:
    vtn.add_event(*event, market_context=PROGRAM)


async def _in_batches(jobs: Sequence[Awaitable[Any]], size: int = 100) -> None:
    """Await ``jobs`` ``size`` at a time (2,000 handshakes at once would time out)."""
    for i in range(0, len(jobs), size):
        await asyncio.gather(*jobs[i:i + size])


async def _settle(service: ServiceProcess, accepted: Acceptances,
                  settings: E2eSettings) -> None:
    """Wait until no profile arrived for ``quiet_s`` and the controller is idle."""
    deadline = time.monotonic() + settings.round_timeout_s
    while time.monotonic() < deadline:
        quiet_for = time.monotonic() - accepted.last()
        if quiet_for < settings.quiet_s:
            await asyncio.sleep(settings.quiet_s - quiet_for)
            continue
        health = await service.get("/health")
        if not health["planning"] and not health["pending_triggers"]:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the service never settled between rounds")


async def _round(kind: str, marker: str, fire: Callable[[], Awaitable[None]],
                 accepted: Acceptances, settings: E2eSettings) -> Round:
    issued_at = datetime.now(UTC)
    issued_s = accepted.arm()
    await fire()
    missing = await accepted.wait_all(settings.round_timeout_s)
    return Round(kind, marker, issued_at, issued_s, missing, accepted.first_since(issued_s))


def _rows(settings: E2eSettings, rounds: Sequence[Round], journal: Sequence[dict[str, Any]],
          setup_s: float) -> list[dict[str, Any]]:
    """One row per round kind, with the journal's breakdown and the baseline ratio."""
    parts: dict[str, dict[str, list[float]]] = {}
    stray = {kind: 0 for kind in ("dso-event", "operator-replan")}
    refused = dict(stray)
    for i, r in enumerate(rounds):
        ends = rounds[i + 1].issued_at if i + 1 < len(rounds) else None
        during = [p for p in journal if datetime.fromisoformat(p["planned_at"]) >= r.issued_at
                  and (ends is None or datetime.fromisoformat(p["planned_at"]) < ends)]
        mine = [p for p in during if _caused_by(p, r.marker)]
        stray[r.kind] += len(during) - len(mine[:1])
        got = parts.setdefault(r.kind, {"trigger_s": [], "solve_s": [], "dispatch_s": []})
        for plan in mine[:1]:
            seen = min(datetime.fromisoformat(t["at"]) for t in plan["triggers"]
                       if r.marker in t["detail"] or t["kind"] == r.marker)
            got["trigger_s"].append((seen - r.issued_at).total_seconds())
            got["solve_s"].append(plan["solve_s"])
            got["dispatch_s"].append(plan["dispatch_s"])
            refused[r.kind] += sum(1 for a in plan["answers"] if a["status"] != "Accepted")
    rows: list[dict[str, Any]] = []
    for kind in ("dso-event", "operator-replan"):
        mine_rounds = [r for r in rounds if r.kind == kind]
        done = [r.all_s for r in mine_rounds if r.all_s is not None]
        pooled = [s for r in mine_rounds for s in r.station_s]
        got = parts.get(kind, {})
        rows.append({
            "bench": BENCH, "mode": kind, "stations": settings.stations,
            "rounds": len(mine_rounds), "rounds_complete": len(done),
            "latency_p50_s": _pq(done, 50), "latency_p99_s": _pq(done, 99),
            "station_latency_p50_s": _pq(pooled, 50), "station_latency_p99_s": _pq(pooled, 99),
            "trigger_p50_s": _pq(got.get("trigger_s", []), 50),
            "solve_p50_s": _pq(got.get("solve_s", []), 50),
            "dispatch_p50_s": _pq(got.get("dispatch_s", []), 50),
            "stray_plans": stray[kind], "not_accepted": refused[kind],
            "baseline": "operator-replan", "poll_interval_s": settings.poll_interval_s,
            "horizon_intervals": settings.horizon_intervals, "method": settings.method,
            "setup_s": _s(setup_s)})
    base = rows[1]
    for row in rows:
        for q in ("p50", "p99"):
            a, b = row[f"latency_{q}_s"], base[f"latency_{q}_s"]
            row[f"ratio_to_baseline{'' if q == 'p50' else '_p99'}"] = \
                round(a / b, 3) if a is not None and b else None
    return rows


def _accepted(accepted: Acceptances, station_id: str, _evse: int, _profile: Any) -> None:
    accepted.record(station_id)


def _caused_by(plan: dict[str, Any], marker: str) -> bool:
    return any(marker in t["detail"] or t["kind"] == marker for t in plan["triggers"])


def _s(value: float) -> float:
    return round(value, 4)


def _pq(values: Sequence[float], q: float) -> float | None:
    """Percentile ``q`` rounded for printing; None without values."""
    return _s(percentile(values, q)) if values else None


def bench_e2e(sizes: Sequence[int], rounds: int, json_only: bool, *,
              poll_interval_s: float = 1.0, horizon_intervals: int = 96,
              method: str = "auto", seed: int = 7) -> int:
    """Run every fleet size; one JSON line per size and round kind (and a table unless
    ``json_only``).  Returns 1 when a run failed or a round did not complete."""
    status = 0
    rows: list[dict[str, Any]] = []
    for n in sizes:
        settings = E2eSettings(stations=n, rounds=rounds, poll_interval_s=poll_interval_s,
                               horizon_intervals=horizon_intervals, method=method, seed=seed)
        say = _silent if json_only else _to_stderr
        say(f"gridflex bench e2e: {n} stations, {rounds} rounds of each kind")
        with tempfile.TemporaryDirectory(prefix="gridflex-e2e-") as tmp:
            try:
                found = asyncio.run(run_e2e(settings, Path(tmp), say))
            except Exception as exc:  # one failed size must not hide the others
                found = [{"bench": BENCH, "stations": n,
                          "error": f"{type(exc).__name__}: {exc}"}]
        for row in found:
            print(json.dumps(row), flush=True)
            if "error" in row or row["rounds_complete"] < row["rounds"]:
                status = 1
        rows.extend(found)
    if not json_only:
        print(_table(rows), file=sys.stderr)
    return status


def _silent(_: str) -> None:
    pass


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'stations':>8} {'mode':<16} {'p50 s':>7} {'p99 s':>7} {'trigger':>8} "
             f"{'solve':>7} {'dispatch':>8} {'ratio':>6}"]

    def cell(value: Any, width: int) -> str:
        return f"{value:>{width}.2f}" if isinstance(value, float) else f"{'-':>{width}}"

    for row in rows:
        if "error" in row:
            lines.append(f"{row['stations']:>8} error: {row['error']}")
            continue
        lines.append(f"{row['stations']:>8} {row['mode']:<16} {cell(row['latency_p50_s'], 7)} "
                     f"{cell(row['latency_p99_s'], 7)} {cell(row['trigger_p50_s'], 8)} "
                     f"{cell(row['solve_p50_s'], 7)} {cell(row['dispatch_p50_s'], 8)} "
                     f"{cell(row['ratio_to_baseline'], 6)}")
    return "\n".join(lines)
