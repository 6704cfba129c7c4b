"""Real IEDs on 127.0.0.1 (each in its own process) and a sink that records what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.iec61850.client import IedAdapter
from adapters.iec61850.config import IedConfig, ied_from_mapping
from aggregator.model import GridConstraint
from tests.peers.availability import missing_peer
from tests.peers.iec61850.process import LIBIEC_SERVER, RUST_SERVER, Peer

DOMAIN = "GWEVSE1"
ENTRIES = 8


@dataclass
class RecordingSink:
    """A ``ConstraintSink`` that keeps every call, newest last."""

    published: dict[str, tuple[GridConstraint, ...]] = field(default_factory=dict)
    history: list[tuple[str, str, Any]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, source: str, scope: str, constraints: Sequence[GridConstraint],
                at: datetime) -> None:
        self.published[scope] = tuple(constraints)
        self.history.append(("publish", scope, tuple(constraints)))

    def withdraw(self, source: str, scope: str, at: datetime, reason: str) -> None:
        self.published.pop(scope, None)
        self.history.append(("withdraw", scope, reason))

    def publish_prices(self, source: str, scope: str, prices: Sequence[Any],
                       at: datetime) -> None:
        self.history.append(("prices", scope, tuple(prices)))

    def publish_demand_charges(self, source: str, scope: str, charges: Sequence[Any],
                               at: datetime) -> None:
        self.history.append(("demand_charges", scope, tuple(charges)))

    def link_up(self, source: str, at: datetime) -> None:
        self.links.append(("up", "contact"))

    def link_lost(self, source: str, at: datetime, reason: str) -> None:
        self.links.append(("lost", reason))

    def limit_kw(self, scope: str) -> float | None:
        items = self.published.get(scope)
        return items[0].import_max_kw if items else None


async def until(predicate: Callable[[], Any], timeout_s: float = 10.0,
                what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy (deadline ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(cfg: IedConfig, sink: Any) -> AsyncIterator[IedAdapter]:
    """An ``IedAdapter`` running as a task for the block, stopped afterwards."""
    adapter = IedAdapter(cfg, sink)
    task = asyncio.create_task(adapter.run())
    try:
        yield adapter
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 5)


def faults(adapter: IedAdapter, kind: str) -> list[str]:
    """The adapter's faults of one kind as ``"ref: reason"``."""
    return [f"{f.ref}: {f.reason}" for f in adapter.faults if f.kind == kind]


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def set_limit(peer: Peer, value_w: float, *, quality: int = 0, t_ms: int | None = None,
              clock_failure: bool = False) -> None:
    """ChaPwrLim value, quality and timestamp in one model lock (one report)."""
    peer.cmd(op="batch", items=[
        {"op": "float", "ref": "DESE1.ChaPwrLim.setMag.f", "value": value_w},
        {"op": "quality", "ref": "DESE1.ChaPwrLim.q", "bits": quality},
        {"op": "time", "ref": "DESE1.ChaPwrLim.t", "ms": now_ms() if t_ms is None else t_ms,
         "clock_failure": clock_failure}])


def set_schedule(peer: Peer, name: str, *, state: int, priority: int = 10,
                 start_ms: int | None = None, interval_s: int = 900,
                 values_w: Sequence[float] = (), entries: int | None = None,
                 quality: int = 0) -> None:
    """One FSCH's header and values in one model lock."""
    items: list[dict[str, Any]] = [
        {"op": "int", "ref": f"{name}.SchdSt.stVal", "value": state},
        {"op": "quality", "ref": f"{name}.SchdSt.q", "bits": quality},
        {"op": "int", "ref": f"{name}.SchdPrio.setVal", "value": priority},
        {"op": "int", "ref": f"{name}.NumEntr.setVal",
         "value": len(values_w) if entries is None else entries},
        {"op": "int", "ref": f"{name}.SchdIntv.setVal", "value": interval_s},
        {"op": "time", "ref": f"{name}.StrTm.setTm",
         "ms": now_ms() - 60_000 if start_ms is None else start_ms}]
    items += [{"op": "float", "ref": f"{name}.ValASG{i}.setMag.f", "value": v}
              for i, v in enumerate(values_w, start=1)]
    peer.cmd(op="batch", items=items)


def set_active(peer: Peer, ref: str) -> None:
    peer.cmd(op="string", ref="FSCC1.ActSchdRef.stVal", value=ref)


def libiec_config(port: int, **overrides: Any) -> IedConfig:
    """The adapter configuration for the libiec61850 peer (short timeouts for tests)."""
    data: dict[str, Any] = {
        "name": "gw1", "host": "127.0.0.1", "port": port, "domain": DOMAIN,
        "node_id": "site-a",
        "limit": {"value": "DESE1.ChaPwrLim.setMag.f[SP]", "quality": "DESE1.ChaPwrLim.q[ST]",
                  "time": "DESE1.ChaPwrLim.t[ST]"},
        "schedules": [{"name": "FSCH1", "max_entries": ENTRIES},
                      {"name": "FSCH2", "max_entries": ENTRIES}],
        "active_schedule": "FSCC1.ActSchdRef.stVal[ST]",
        "reports": [{"rcb": "LLN0$RP$urcbLimits01", "covers": ["limit"]},
                    {"rcb": "LLN0$RP$urcbSchedules01", "covers": ["schedules"]}],
        "publish": {"soc": "DEEV1.Soc.setMag.f[SP]", "departure": "DEEV1.DptTm.setVal[SP]",
                    "energy_requested": "DEEV1.EnAmnt.setMag.f[SP]",
                    "power_target": "DESE1.ChaPwrTgt.setMag.f[SP]"},
        "connect_timeout_s": 1.0, "request_timeout_s": 0.5, "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2, "integrity_period_s": 0.3, "poll_interval_s": 0.3,
        "ttl_s": 2.0, "max_age_s": 30.0, "max_future_s": 5.0, "max_power_kw": 100.0}
    data.update(overrides)
    return ied_from_mapping(data)


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing_peer(f"{what} is not installed")


def _start(script: Any, *args: str) -> Peer:
    try:
        return Peer(script, *args)
    except Exception as exc:  # a peer that cannot start is a missing peer
        missing_peer(f"{script.name} did not start: {exc}")


@pytest.fixture(scope="module")
def shared_libiec() -> Iterator[Peer]:
    """One libiec61850 IED for tests that only change values (reset by ``libiec``)."""
    _require("pyiec61850", "pyiec61850-ng (libiec61850 peer)")
    peer = _start(LIBIEC_SERVER, "--entries", str(ENTRIES), "--intg-ms", "300")
    yield peer
    peer.close()


def reset(peer: Peer) -> None:
    """Good limit, no running schedule, no active schedule."""
    set_limit(peer, 11000.0)
    for name in ("FSCH1", "FSCH2"):
        set_schedule(peer, name, state=3, values_w=[0.0] * ENTRIES)
    set_active(peer, "")


@pytest.fixture
def libiec(shared_libiec: Peer) -> Peer:
    reset(shared_libiec)
    return shared_libiec


@pytest.fixture
def own_libiec() -> Iterator[Peer]:
    """A libiec61850 IED of the test's own, to kill, pause and restart."""
    _require("pyiec61850", "pyiec61850-ng (libiec61850 peer)")
    peer = _start(LIBIEC_SERVER, "--entries", str(ENTRIES), "--intg-ms", "300")
    reset(peer)
    yield peer
    peer.close()


@pytest.fixture
def libiec_peers() -> Iterator[Callable[[], Peer]]:
    """Start as many libiec61850 IEDs (own processes, reset) as the test asks for."""
    _require("pyiec61850", "pyiec61850-ng (libiec61850 peer)")
    started: list[Peer] = []

    def start() -> Peer:
        peer = _start(LIBIEC_SERVER, "--entries", str(ENTRIES), "--intg-ms", "300")
        started.append(peer)
        reset(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


@pytest.fixture
def rust_peer() -> Iterator[Peer]:
    """The ``iec61850`` package's server, which rejects some writes."""
    peer = _start(RUST_SERVER)
    yield peer
    peer.close()
