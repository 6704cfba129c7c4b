"""``gridflex bench ieee2030_5``: a full discovery walk and one poll cycle for N sites.

Per size a loopback 2030.5 server (:class:`adapters.ieee2030_5.loopback.LoopbackServer`,
recorded envoy bodies) lists N EndDevices, each with its own FunctionSetAssignments, two
DERPrograms, a DefaultDERControl and one active DERControl (an import limit, Responses
required).  A fresh :class:`adapters.ieee2030_5.client.Sep2Client` then makes

- the *walk*: its first ``poll_once`` (DeviceCapability, Time, the EndDeviceList paged
  with ``s``/``l``, every site's FunctionSetAssignments, DERPrograms, DERControl lists and
  DefaultDERControl, N limits into the constraint book, the Received and Started Responses
  POSTed and saved in its state file), and
- the *poll*: its second ``poll_once`` (the same walk; nothing new to answer).

Server and client share one event loop (one core): ``server_share`` is the part of the
walk spent in the server's request handler, so a high share means the loopback, not the
client, is the bottleneck.  ``walk_cpu_s`` is the process's CPU time over the walk (less
sensitive than ``walk_s`` to other work on a shared machine); ``walk_connections`` counts
the client's connections (kept alive: at most ``max_concurrency``).  ``latency_ms`` delays
every answer of the server, as a wide-area link would: the sequential round trips are then
what concurrency saves.

Baselines, measured in the same run: the same walk for one site (``ratio_to_one_site`` =
``walk_s_per_site`` / ``one_site_walk_s``: 1.0 is linear scaling) and a raw GET of
DeviceCapability with a bare aiohttp session (``ratio_to_raw_gets`` = ``walk_s`` /
(requests of the walk x ``raw_get_s``): the client's cost over bare HTTP round trips).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aggregator.constraints import ConstraintBook

SIZES = (1, 100, 1000)
"""The sizes the issue asks about (a default for the command line)."""
START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
"""The simulated time of server and client (fixed: nothing changes between walk and poll)."""
RAW_GET_SAMPLES = 50
ONE_SITE_RUNS = 3
LIMIT_W = 7_000


def _site_names(n_sites: int) -> dict[str, str]:
    """Site name -> node id for ``n_sites`` sites."""
    return {f"site-{i:05d}": f"node-{i:05d}" for i in range(n_sites)}


async def _raw_get_s(url: str, samples: int) -> float:
    """Median round trip of a bare GET of DeviceCapability (one kept-alive connection)."""
    import aiohttp

    durations: list[float] = []
    async with aiohttp.ClientSession() as session:
        for index in range(samples + 1):
            started = time.perf_counter()
            async with session.get(f"{url}/dcap") as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"GET /dcap answered {reply.status}")
            if index:  # the first one opens the connection
                durations.append(time.perf_counter() - started)
    return statistics.median(durations)


async def _measure(n_sites: int, *, page_size: int, concurrency: int | None,
                   state_dir: Path | None, raw_gets: int,
                   latency_s: float = 0.0) -> dict[str, Any]:
    """Set up N sites on a fresh loopback server; time a fresh client's walk and poll."""
    from adapters.ieee2030_5.client import Sep2Client
    from adapters.ieee2030_5.config import ClientConfig
    from adapters.ieee2030_5.loopback import LoopbackServer

    server = LoopbackServer(clock=lambda: START, registered=(), latency_s=latency_s)
    url = await server.start()
    client: Sep2Client | None = None
    try:
        started = time.perf_counter()
        names = _site_names(n_sites)
        extra: dict[str, Any] = {"page_size": page_size, "min_poll_s": 1,
                                 "request_timeout_s": 120}
        if concurrency is not None:
            extra["max_concurrency"] = concurrency
        if state_dir is not None:
            extra["state_file"] = str(state_dir / f"sep2-state-{uuid.uuid4().hex}.json")
        config = ClientConfig.from_mapping(server.client_settings(names, **extra))
        server.list_sites(names)
        for index, name in enumerate(names):
            server.set_import_limit(name, START - timedelta(minutes=1), 3600, LIMIT_W + index)
        setup_s = time.perf_counter() - started
        raw_get_s = await _raw_get_s(url, raw_gets)
        book = ConstraintBook(started_at=START)
        client = Sep2Client(config, book, clock=lambda: START)
        phases: dict[str, dict[str, Any]] = {}
        for phase in ("walk", "poll"):
            server.peers.clear()
            requests, busy_s = len(server.requests), server.busy_s
            started, cpu = time.perf_counter(), time.process_time()
            outcome = await client.poll_once()
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
            if not outcome.ok:
                raise RuntimeError(f"{phase}: {outcome.reason}")
            phases[phase] = {"s": elapsed, "cpu_s": cpu_s,
                             "requests": len(server.requests) - requests,
                             "server_s": server.busy_s - busy_s,
                             "connections": len(server.peers),
                             "responses": outcome.responses_sent}
        limited = sum(1 for index, node in enumerate(names.values())
                      if book.limit_kw(node, "import", START) == (LIMIT_W + index) / 1000)
    finally:
        if client is not None:
            await client.close()
        await server.stop()
    walk, poll = phases["walk"], phases["poll"]
    return {"sites": n_sites, "walk_s": walk["s"], "poll_s": poll["s"],
            "walk_cpu_s": walk["cpu_s"], "poll_cpu_s": poll["cpu_s"],
            "walk_requests": walk["requests"], "poll_requests": poll["requests"],
            "walk_server_s": walk["server_s"], "poll_server_s": poll["server_s"],
            "walk_connections": walk["connections"], "poll_connections": poll["connections"],
            "responses_walk": walk["responses"], "responses_poll": poll["responses"],
            "sites_limited": limited, "raw_get_s": raw_get_s, "setup_s": setup_s,
            "max_concurrency": config.max_concurrency}


def _row(measured: dict[str, Any], one_site_walk_s: float, settings: dict[str, Any]) -> dict[
        str, Any]:
    """The JSON line of one size: figures rounded, ratios against the baselines."""
    n_sites = measured["sites"]
    walk_s, poll_s = measured["walk_s"], measured["poll_s"]
    per_site = walk_s / n_sites

    def r(value: float, digits: int = 6) -> float:
        return round(value, digits)

    return {
        "bench": "ieee2030_5", "sites": n_sites,
        "walk_s": r(walk_s), "poll_s": r(poll_s),
        "walk_cpu_s": r(measured["walk_cpu_s"]), "poll_cpu_s": r(measured["poll_cpu_s"]),
        "walk_s_per_site": r(per_site), "poll_s_per_site": r(poll_s / n_sites),
        "walk_requests": measured["walk_requests"], "poll_requests": measured["poll_requests"],
        "walk_connections": measured["walk_connections"],
        "poll_connections": measured["poll_connections"],
        "responses_walk": measured["responses_walk"],
        "responses_poll": measured["responses_poll"],
        "sites_limited": measured["sites_limited"],
        "server_share_walk": r(measured["walk_server_s"] / walk_s, 3) if walk_s else None,
        "server_share_poll": r(measured["poll_server_s"] / poll_s, 3) if poll_s else None,
        "baseline": f"the same walk for 1 site (median of {ONE_SITE_RUNS}); a bare aiohttp GET "
                    f"of DeviceCapability (median of the run's samples)",
        "one_site_walk_s": r(one_site_walk_s),
        "ratio_to_one_site": r(per_site / one_site_walk_s, 3) if one_site_walk_s else None,
        "raw_get_s": r(measured["raw_get_s"]),
        "ratio_to_raw_gets": r(walk_s / (measured["walk_requests"] * measured["raw_get_s"]),
                               3) if measured["walk_requests"] else None,
        "setup_s": r(measured["setup_s"], 3),
        **settings, "max_concurrency": measured["max_concurrency"],
    }


def bench_ieee2030_5(sizes: Sequence[int], json_only: bool, *, page_size: int = 50,
                     concurrency: int | None = None, state_file: bool = True,
                     latency_ms: float = 0.0, raw_gets: int = RAW_GET_SAMPLES) -> int:
    """Measure every size and print one JSON line each (and a table unless ``json_only``).

    ``concurrency`` overrides the client's ``max_concurrency`` (None: its default);
    ``state_file`` runs the client with a state file in a temporary folder (as a service
    would); ``latency_ms`` delays every answer of the server (a wide-area round trip).
    Returns 0, or 1 when a size failed (its line has ``error``) or a site's limit did not
    reach the book.
    """
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be whole numbers >= 1, got {list(sizes)!r}")
    if not 1 <= page_size <= 255:
        raise ValueError(f"page_size must be 1..255, got {page_size}")
    if concurrency is not None and not 1 <= concurrency <= 64:
        raise ValueError(f"concurrency must be 1..64, got {concurrency}")
    if not 0 <= latency_ms <= 10_000:
        raise ValueError(f"latency_ms must be 0..10000, got {latency_ms}")
    settings = {"page_size": page_size, "max_concurrency": concurrency,
                "state_file": state_file, "latency_ms": latency_ms}
    client_log = logging.getLogger("adapters.ieee2030_5.client")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # registration and poll chatter would drown the lines
    status = 0
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gridflex-bench-2030-5-") as scratch:
            state_dir = Path(scratch) if state_file else None

            def measure(n_sites: int) -> dict[str, Any]:
                return asyncio.run(_measure(n_sites, page_size=page_size,
                                            concurrency=concurrency, state_dir=state_dir,
                                            raw_gets=raw_gets, latency_s=latency_ms / 1000))

            try:  # the median of a few: one walk of one site is a few milliseconds
                one_site_walk_s = statistics.median(float(measure(1)["walk_s"])
                                                    for _ in range(ONE_SITE_RUNS))
            except Exception as exc:
                print(json.dumps({"bench": "ieee2030_5", "sites": 1,
                                  "error": f"baseline: {type(exc).__name__}: {exc}"}),
                      flush=True)
                return 1
            for n_sites in sizes:
                try:
                    row = _row(measure(n_sites), one_site_walk_s, settings)
                except Exception as exc:  # one failed size must not hide the others
                    row = {"bench": "ieee2030_5", "sites": n_sites,
                           "error": f"{type(exc).__name__}: {exc}"}
                if "error" in row or row["sites_limited"] != n_sites:
                    status = 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        client_log.setLevel(level)
    if not json_only:
        _table(rows)
    return status


def _table(rows: Sequence[dict[str, Any]]) -> None:
    print()
    print(f"{'sites':>6} {'walk s':>9} {'poll s':>9} {'ms/site':>8} {'x 1 site':>9} "
          f"{'requests':>9} {'x raw GET':>10} {'server':>7}")
    for row in rows:
        if "error" in row:
            print(f"{row['sites']:>6}  error: {row['error']}")
            continue
        print(f"{row['sites']:>6} {row['walk_s']:>9.3f} {row['poll_s']:>9.3f} "
              f"{row['walk_s_per_site'] * 1000:>8.2f} {row['ratio_to_one_site']:>9} "
              f"{row['walk_requests']:>9} {row['ratio_to_raw_gets']:>10} "
              f"{row['server_share_walk']:>7}")
