"""``gridflex bench iec61850``: from a changed DESE.ChaPwrLim to the limit in the book.

Per mode a real IED runs on 127.0.0.1 in its own process and gridflex's adapter
(``adapters.iec61850.client.IedAdapter``) feeds a ``ConstraintBook``.  A sample changes
ChaPwrLim on the IED and measures until a book listener sees the new limit in force
(``book.limit_kw``).  The clock is ``time.monotonic()``, one clock for every process on
the host: the start is when the IED released its model lock with the new value (the
IED reports it), so the pipe to the IED is not counted.

- ``report``: the adapter is subscribed through the unbuffered RCB ``urcbLimits01``
  (data change, integrity period ``integrity_period_s``).  Needs the libiec61850 IED of
  the tests (pyiec61850-ng, GPL, a test extra) from a source checkout.
- ``poll``: no reports; the adapter polls every ``poll_interval_s``.  The change lands
  at a random phase of the poll cycle, so the latency is about half an interval plus
  the read.  Runs on the libiec61850 IED when it is there, otherwise on the demo
  substation (``iec61850`` package); ``server`` says which.

Baseline, per mode and on the same IED: the round trip of one raw MMS Read of the same
objects (value, q, t) with the same client (``iec61850``).  ``ratio_to_baseline`` is
``latency_p50_s / baseline_p50_s`` (and ``..._p99``).  One JSON line per mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aggregator.measure import percentile

MODES = ("report", "poll")
NODE = "bench-node"
DOMAIN_LIBIEC = "GWEVSE1"
LIBIEC_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "peers" / "iec61850" / \
    "libiec_server.py"
LIBIEC_PACKAGE = "pyiec61850-ng"
REQUEST_TIMEOUT_S = 2.0
SEED = 61850


class _Ied(Protocol):
    server: str
    domain: str
    port: int
    with_time: bool

    async def change(self, value_w: float) -> float:
        """Set ChaPwrLim; return ``time.monotonic()`` when the IED had the new value."""

    async def close(self) -> None: ...


class _LibiecIed:
    """The tests' libiec61850 IED (``tests/peers/iec61850/libiec_server.py``)."""

    server = "libiec61850"
    domain = DOMAIN_LIBIEC
    with_time = True

    def __init__(self) -> None:
        from adapters.iec61850.peer_process import PeerProcess

        self._peer = PeerProcess([sys.executable, str(LIBIEC_SCRIPT), "--intg-ms", "10000"],
                                 name="libiec_server.py")
        self.port = self._peer.port
        self._set(11000.0)  # a good value with a fresh t before the adapter reads it

    def _set(self, value_w: float) -> dict[str, Any]:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        self._peer.send(op="batch", items=[
            {"op": "float", "ref": "DESE1.ChaPwrLim.setMag.f", "value": value_w},
            {"op": "quality", "ref": "DESE1.ChaPwrLim.q", "bits": 0},
            {"op": "time", "ref": "DESE1.ChaPwrLim.t", "ms": now_ms}])
        return self._peer.reply()

    async def change(self, value_w: float) -> float:
        return float((await asyncio.to_thread(self._set, value_w))["applied_mono"])

    async def close(self) -> None:
        await asyncio.to_thread(self._peer.close)


class _SubstationIed:
    """The demo substation (``iec61850`` package server): polling only, no ``t``."""

    server = "iec61850"
    with_time = False

    def __init__(self) -> None:
        from adapters.iec61850.substation import DOMAIN, Substation

        self.domain = DOMAIN
        self._substation = Substation()
        self.port = 0

    async def start(self) -> _SubstationIed:
        self.port = await self._substation.start()
        return self

    async def change(self, value_w: float) -> float:
        reply = await self._substation.set_limit(value_w, datetime.now(UTC))
        return float(reply["applied_mono"])

    async def close(self) -> None:
        await self._substation.stop()


@dataclass(frozen=True, slots=True)
class Settings:
    """What a mode ran with (printed with its result)."""

    poll_interval_s: float | None
    integrity_period_s: float | None


def libiec_missing() -> str | None:
    """Why the libiec61850 IED cannot run here (None: it can)."""
    if importlib.util.find_spec("pyiec61850") is None:
        return f"{LIBIEC_PACKAGE} is not installed (a test extra: pip install -e '.[test]')"
    if not LIBIEC_SCRIPT.is_file():
        return f"{LIBIEC_SCRIPT} is missing (the libiec61850 IED comes with a source checkout)"
    return None


async def _open_ied(mode: str) -> _Ied:
    if libiec_missing() is None:
        return await asyncio.to_thread(_LibiecIed)
    if mode == "report":
        raise RuntimeError(libiec_missing())
    return await _SubstationIed().start()


def _adapter_config(ied: _Ied, mode: str, settings: Settings) -> Any:
    from adapters.iec61850.config import ied_from_mapping

    limit: dict[str, Any] = {"value": "DESE1.ChaPwrLim.setMag.f[SP]",
                             "quality": "DESE1.ChaPwrLim.q[ST]"}
    if ied.with_time:
        limit["time"] = "DESE1.ChaPwrLim.t[ST]"
    data: dict[str, Any] = {
        "name": "bench", "host": "127.0.0.1", "port": ied.port, "domain": ied.domain,
        "node_id": NODE, "limit": limit, "request_timeout_s": REQUEST_TIMEOUT_S,
        "connect_timeout_s": 5.0, "max_power_kw": 1000.0}
    if mode == "report":
        assert settings.integrity_period_s is not None
        data["reports"] = [{"rcb": "LLN0$RP$urcbLimits01", "covers": ["limit"]}]
        data["integrity_period_s"] = settings.integrity_period_s
        data["ttl_s"] = max(90.0, 3 * settings.integrity_period_s)
    else:
        assert settings.poll_interval_s is not None
        data["poll_interval_s"] = settings.poll_interval_s
        data["ttl_s"] = max(90.0, 3 * settings.poll_interval_s)
    return ied_from_mapping(data)


async def _baseline(ied: _Ied, samples: int) -> list[float]:
    """Round trips of one raw MMS Read of ChaPwrLim value, q (and t)."""
    import iec61850

    refs = [("DESE1.ChaPwrLim.setMag.f", "SP"), ("DESE1.ChaPwrLim.q", "ST")]
    if ied.with_time:
        refs.append(("DESE1.ChaPwrLim.t", "ST"))
    targets = [(f"{ied.domain}/{ref}", iec61850.FC(fc)) for ref, fc in refs]
    conn = await iec61850.IedConnection.connect(
        f"127.0.0.1:{ied.port}", timeout_ms=5000,
        request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000))
    try:
        await conn.read_multiple(targets, strict=False)  # warm-up
        result = []
        for _ in range(samples):
            started = time.monotonic()
            await conn.read_multiple(targets, strict=False)
            result.append(time.monotonic() - started)
            await asyncio.sleep(0.002)
        return result
    finally:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        for _ in range(3):
            await asyncio.sleep(0)


async def _measure(ied: _Ied, mode: str, samples: int, settings: Settings,
                   rng: random.Random) -> dict[str, Any]:
    from adapters.iec61850.client import IedAdapter
    from aggregator.constraints import BookChange, ChangeKind, ConstraintBook

    book = ConstraintBook(datetime.now(UTC))
    waiting: dict[float, asyncio.Future[float]] = {}

    def on_change(change: BookChange) -> None:
        if change.kind is not ChangeKind.PUBLISHED or not change.constraints:
            return
        seen = time.monotonic()
        kw = change.constraints[0].import_max_kw
        future = waiting.get(kw) if kw is not None else None
        if future is not None and not future.done() and \
                book.limit_kw(NODE, "import", datetime.now(UTC)) == kw:
            future.set_result(seen)

    book.subscribe(on_change)
    adapter = IedAdapter(_adapter_config(ied, mode, settings), book)
    task = asyncio.create_task(adapter.run())
    latencies: list[float] = []
    timeouts = 0
    refresh_s = settings.poll_interval_s or settings.integrity_period_s or 1.0
    wait_s = 2 * refresh_s + 5.0
    try:
        await asyncio.wait_for(adapter.connected.wait(), 15.0)
        for i in range(samples):
            # a random phase against the poll cycle (or the report dispatcher)
            pause_s = rng.uniform(0.0, settings.poll_interval_s) \
                if settings.poll_interval_s else rng.uniform(0.005, 0.02)
            await asyncio.sleep(pause_s)
            value_w = 20000.0 + 10.0 * i
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            waiting[value_w / 1000.0] = future
            applied = await ied.change(value_w)
            try:
                seen = await asyncio.wait_for(future, wait_s)
            except TimeoutError:
                timeouts += 1
                continue
            finally:
                waiting.pop(value_w / 1000.0, None)
            latencies.append(max(0.0, seen - applied))
    finally:
        faults = Counter(f.kind for f in adapter.faults)
        await adapter.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10.0)
    stats = adapter.stats
    return {"latencies": latencies, "timeouts": timeouts, "reports": stats.reports,
            "polls": stats.polls, "sequence_gaps": stats.sequence_gaps,
            "connects": stats.connects, "rejected": stats.rejected, "faults": dict(faults)}


async def _run_mode(mode: str, samples: int, settings: Settings, seed: int) -> dict[str, Any]:
    ied = await _open_ied(mode)
    try:
        baseline = await _baseline(ied, max(samples, 20))
        measured = await _measure(ied, mode, samples, settings, random.Random(seed))
    finally:
        await ied.close()
    latencies: list[float] = measured.pop("latencies")
    base_p50, base_p99 = percentile(baseline, 50), percentile(baseline, 99)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)

    def s(value: float) -> float | None:
        return None if value != value else round(value, 6)

    def ratio(a: float, b: float) -> float | None:
        return None if a != a or not b else round(a / b, 2)

    return {
        "bench": "iec61850", "mode": mode, "server": ied.server,
        "samples": len(latencies), "requested_samples": samples,
        "timeouts": measured.pop("timeouts"),
        "latency_p50_s": s(p50), "latency_p90_s": s(percentile(latencies, 90)),
        "latency_p99_s": s(p99),
        "latency_min_s": s(min(latencies, default=float("nan"))),
        "latency_max_s": s(max(latencies, default=float("nan"))),
        "latency_mean_s": s(statistics.fmean(latencies) if latencies else float("nan")),
        "baseline": "raw MMS Read round trip, same IED, same client (iec61850)",
        "baseline_samples": len(baseline),
        "baseline_p50_s": s(base_p50), "baseline_p99_s": s(base_p99),
        "ratio_to_baseline": ratio(p50, base_p50),
        "ratio_to_baseline_p99": ratio(p99, base_p99),
        "poll_interval_s": settings.poll_interval_s,
        "integrity_period_s": settings.integrity_period_s,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "time_stamp_checked": ied.with_time,
        **measured,
    }


def bench_iec61850(modes: Sequence[str], samples: int, json_only: bool, *,
                   poll_interval_s: float = 1.0, integrity_period_s: float = 10.0,
                   seed: int = SEED) -> int:
    """Measure every mode and print one JSON line each (and a table unless ``json_only``).

    Returns 0, or 1 when a mode could not run (its line has ``error``) or a change never
    reached the book (``timeouts``); 2 for an unknown mode.
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    if poll_interval_s <= 0 or integrity_period_s <= 0:
        raise ValueError("poll_interval_s and integrity_period_s must be > 0")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(json.dumps({"bench": "iec61850", "mode": unknown[0],
                          "error": f"unknown mode (known: {', '.join(MODES)})"}), flush=True)
        return 2
    status = 0
    rows: list[dict[str, Any]] = []
    for mode in modes:
        settings = Settings(poll_interval_s if mode == "poll" else None,
                            integrity_period_s if mode == "report" else None)
        missing = libiec_missing() if mode == "report" else None
        if missing is not None:
            row: dict[str, Any] = {"bench": "iec61850", "mode": mode,
                                   "error": f"report mode needs the libiec61850 IED with report "
                                            f"control blocks: {missing}",
                                   "missing_package": LIBIEC_PACKAGE}
        else:
            # the adapter's faults are counted in the line; its warnings (the link "lost"
            # when the bench stops it) would only clutter stderr
            adapter_log = logging.getLogger("adapters.iec61850.client")
            level = adapter_log.level
            adapter_log.setLevel(logging.ERROR)
            try:
                row = asyncio.run(_run_mode(mode, samples, settings, seed))
            except Exception as exc:  # one failed mode must not hide the others
                row = {"bench": "iec61850", "mode": mode,
                       "error": f"{type(exc).__name__}: {exc}"}
            finally:
                adapter_log.setLevel(level)
        if "error" in row or row.get("timeouts"):
            status = 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not json_only:
        _table(rows)
    return status


def _table(rows: Sequence[dict[str, Any]]) -> None:
    print()
    print(f"{'mode':>7} {'server':>12} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'read p50 ms':>12} {'x read':>8}  settings")
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:>7}  error: {row['error']}")
            continue

        def ms(key: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return "-" if value is None else f"{value * 1000:.2f}"

        setting = f"poll {row['poll_interval_s']:g} s" if row["poll_interval_s"] else \
            f"integrity {row['integrity_period_s']:g} s"
        print(f"{row['mode']:>7} {row['server']:>12} {row['samples']:>4} "
              f"{ms('latency_p50_s'):>9} {ms('latency_p99_s'):>9} "
              f"{ms('baseline_p50_s'):>12} {row['ratio_to_baseline'] or '-':>8}  {setting}")
