"""Two libiec61850 IEDs (two server processes) feeding one ConstraintBook."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.iec61850.client import Iec61850Source
from adapters.iec61850.config import AdapterConfig
from aggregator.constraints import ChangeKind, ConstraintBook, SafeDefault
from tests.adapters.iec61850.conftest import libiec_config, reset, set_limit, until
from tests.peers.iec61850.process import Peer

SOURCE = "iec61850"


def config(peers: dict[str, tuple[Peer, str]]) -> AdapterConfig:
    """One IED per name: (peer, node), the limit by report, no schedules."""
    return AdapterConfig(tuple(
        libiec_config(peer.port, name=name, node_id=node, schedules=[], active_schedule=None,
                      reports=[{"rcb": "LLN0$RP$urcbLimits01", "covers": ["limit"]}])
        for name, (peer, node) in peers.items()))


@contextlib.asynccontextmanager
async def source_running(cfg: AdapterConfig, book: ConstraintBook) -> AsyncIterator[
        Iec61850Source]:
    source = Iec61850Source(cfg, book)
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


def limit(book: ConstraintBook, node: str) -> float | None:
    return book.limit_kw(node, "import", datetime.now(UTC))


def link_changes(book: ConstraintBook) -> list[ChangeKind]:
    return [c.kind for c in book.journal if c.kind in (ChangeKind.LINK_UP,
                                                        ChangeKind.LINK_LOST)]


def test_two_ieds_feed_one_book(libiec_peers: Callable[[], Peer]) -> None:
    gw1, gw2 = libiec_peers(), libiec_peers()
    set_limit(gw2, 7000.0)
    book = ConstraintBook(datetime.now(UTC),
                          [SafeDefault(SOURCE, "site-a", import_max_kw=3.0),
                           SafeDefault(SOURCE, "site-b", import_max_kw=4.0)])
    cfg = config({"gw1": (gw1, "site-a"), "gw2": (gw2, "site-b")})

    async def body() -> None:
        async with source_running(cfg, book) as source:
            await until(lambda: book.link_is_up(SOURCE) and limit(book, "site-a") == 11.0
                        and limit(book, "site-b") == 7.0)
            assert link_changes(book) == [ChangeKind.LINK_UP]  # once, with both IEDs up
            # each IED's change lands on its own node
            await asyncio.to_thread(set_limit, gw1, 9000.0)
            await asyncio.to_thread(set_limit, gw2, 6000.0)
            await until(lambda: limit(book, "site-a") == 9.0 and limit(book, "site-b") == 6.0)
            # gw2 dies: the source is down, gw1 goes on, gw2's last limit holds until it
            # expires and then site-b's safe default applies; site-a keeps gw1's limit
            gw2.kill()
            await until(lambda: not book.link_is_up(SOURCE), what="link lost")
            await asyncio.to_thread(set_limit, gw1, 8000.0)
            await until(lambda: limit(book, "site-a") == 8.0, what="gw1 while gw2 is down")
            assert limit(book, "site-b") == 6.0
            (last,) = [c for c in book.published() if c.node_id == "site-b"]
            assert last.expires_at is not None
            after = last.expires_at + timedelta(milliseconds=1)
            assert book.limit_kw("site-b", "import", after) == 4.0
            (reason,) = book.why("site-b", after)
            assert reason.constraint.source == "safe-default"
            assert "gw2: " in reason.constraint.source_ref
            # site-a is covered by gw1's fresh limits: no safe default there
            await until(lambda: min(c.expires_at or after for c in book.published()
                                    if c.node_id == "site-a") > after, what="gw1 refresh")
            assert book.limit_kw("site-a", "import", after) == 8.0
            # gw2 comes back on its port: the source is up again, site-b from gw2
            gw2.start()
            reset(gw2)
            set_limit(gw2, 5000.0)
            await until(lambda: book.link_is_up(SOURCE) and limit(book, "site-b") == 5.0,
                        what="gw2 back")
            assert link_changes(book) == [ChangeKind.LINK_UP, ChangeKind.LINK_LOST,
                                          ChangeKind.LINK_UP]
            adapters = source.adapters
            assert adapters["gw1"].stats.connects == 1 and adapters["gw2"].stats.connects >= 2
            assert adapters["gw1"].stats.reports > 0 and adapters["gw2"].stats.reports > 0

    asyncio.run(body())


def test_two_ieds_on_one_node_the_lower_limit_binds(libiec_peers: Callable[[], Peer]) -> None:
    gw1, gw2 = libiec_peers(), libiec_peers()
    set_limit(gw2, 7000.0)
    book = ConstraintBook(datetime.now(UTC))
    cfg = config({"gw1": (gw1, "site-a"), "gw2": (gw2, "site-a")})

    def binding() -> tuple[float, str] | Any:
        reasons = [r for r in book.why("site-a", datetime.now(UTC)) if r.binding]
        return (reasons[0].limit_kw, reasons[0].constraint.source_ref.split()[0]) \
            if reasons else None

    async def body() -> None:
        async with source_running(cfg, book):
            await until(lambda: binding() == (7.0, "gw2") and
                        len(book.why("site-a", datetime.now(UTC))) == 2)
            await asyncio.to_thread(set_limit, gw2, 15000.0)
            await until(lambda: binding() == (11.0, "gw1"), what="gw1 binds")
            await asyncio.to_thread(set_limit, gw1, 16000.0)
            await until(lambda: binding() == (15.0, "gw2"), what="gw2 binds again")

    asyncio.run(body())
