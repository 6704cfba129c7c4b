"""The demo substation (``iec61850`` package server, no GPL) with the real adapter."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.iec61850.client import IedAdapter
from adapters.iec61850.substation import DOMAIN, Substation, SubstationError
from aggregator.constraints import ConstraintBook, SafeDefault
from tests.adapters.iec61850.conftest import faults, running, until

SCOPE = "substation:DESE1.ChaPwrLim.setMag.f"
FAST = {"connect_timeout_s": 1.0, "request_timeout_s": 0.5, "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2, "poll_interval_s": 0.2, "ttl_s": 2.0, "max_power_kw": 100.0}


def go(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_polling_adapter_sees_the_changed_limit_in_the_book() -> None:
    book = ConstraintBook(datetime.now(UTC),
                          [SafeDefault("iec61850", "feeder-1", import_max_kw=5.0)])
    at = datetime(2026, 11, 22, 17, 0, tzinfo=UTC)

    async def body() -> None:
        async with Substation(limit_w=11000.0) as substation:
            cfg = substation.ied_config(node_id="feeder-1", **FAST)
            assert cfg.reports == () and cfg.limit is not None and cfg.limit.time is None
            async with running(cfg, book) as adapter:
                await until(lambda: book.limit_kw("feeder-1", "import",
                                                  datetime.now(UTC)) == 11.0)
                reply = await substation.set_limit(30000.0, at)
                assert reply["limit_w"] == 30000.0
                assert reply["t"] == at.isoformat() and reply["t_served"] is False
                await until(lambda: book.limit_kw("feeder-1", "import",
                                                  datetime.now(UTC)) == 30.0,
                            what="30 kW in the book")
                (reason,) = book.why("feeder-1", datetime.now(UTC))
                assert reason.binding and reason.constraint.source == "iec61850"
                assert f"substation {DOMAIN}/DESE1.ChaPwrLim.setMag.f = 30000 (30 kW)" in \
                    reason.constraint.source_ref
                assert "q=good t=none" in reason.constraint.source_ref
                assert adapter.stats.polls >= 1 and adapter.stats.reports == 0
                await substation.set_limit(7400.0)
                await until(lambda: book.limit_kw("feeder-1", "import",
                                                  datetime.now(UTC)) == 7.4)
                assert faults(adapter, "value") == []
            assert await substation.stop() == 0  # stdin closed: a clean exit

    go(body)


def test_adapter_clock_stamps_the_constraint() -> None:
    """``t`` cannot be served: a demo on an accelerated clock injects it into the adapter."""
    simulated = datetime(2026, 11, 22, 17, 0, tzinfo=UTC)
    book = ConstraintBook(simulated)

    async def body() -> None:
        async with Substation() as substation:
            await substation.set_limit(30000.0, simulated)
            cfg = substation.ied_config(node_id="feeder-1", **FAST)
            adapter = IedAdapter(cfg, book, clock=lambda: simulated)
            task = asyncio.create_task(adapter.run())
            try:
                await until(lambda: book.limit_kw("feeder-1", "import", simulated) == 30.0)
            finally:
                await adapter.stop()
                await asyncio.wait_for(task, 5)
        (constraint,) = book.published()
        assert constraint.start == simulated == constraint.received_at
        assert constraint.expires_at == simulated + timedelta(seconds=2.0)

    go(body)


def test_timestamp_reference_is_rejected_because_t_is_never_set() -> None:
    async def body() -> None:
        async with Substation() as substation:
            cfg = substation.ied_config(
                node_id="feeder-1", limit={"value": "DESE1.ChaPwrLim.setMag.f[SP]",
                                           "quality": "DESE1.ChaPwrLim.q[ST]",
                                           "time": "DESE1.ChaPwrLim.t[ST]"}, **FAST)
            book = ConstraintBook(datetime.now(UTC))
            async with running(cfg, book) as adapter:
                await substation.set_limit(30000.0, datetime.now(UTC))
                found = await until(lambda: faults(adapter, "value"))
                assert "DESE1.ChaPwrLim.t: timestamp not set" in found[0]
                assert book.published() == []

    go(body)


def test_writes_are_accepted_and_echoed() -> None:
    departure = datetime(2031, 5, 4, 17, 30, tzinfo=UTC)

    async def body() -> None:
        async with Substation() as substation:
            cfg = substation.ied_config(node_id="feeder-1", **FAST)
            book = ConstraintBook(datetime.now(UTC))
            async with running(cfg, book) as adapter:
                await until(adapter.connected.is_set)
                await adapter.publish_state(power_target_kw=7.4, soc_pct=55.0,
                                            departure=departure, energy_requested_kwh=20.0)
            writes = {}
            while len(writes) < 4:
                item = await asyncio.wait_for(substation.writes.get(), 5)
                writes[item["write"]] = item["value"]
            assert writes == {"EVSE1/DEEV1.Soc.setVal": 55.0,
                              "EVSE1/DEEV1.DptTm.setVal": int(departure.timestamp()),
                              "EVSE1/DEEV1.EnAmnt.setVal": 20000.0,
                              "EVSE1/DESE1.ChaPwrTgt.setVal": pytest.approx(7400.0)}
            assert await substation.get("target_w") == pytest.approx(7400.0)

    go(body)


@pytest.mark.parametrize(("command", "error"), [
    ({"set_limit_w": -1}, "expected 0..1e+09 W"),
    ({"set_limit_w": "30 kW"}, "expected a number of W"),
    ({"set_limit_w": 1000, "t": "2026-11-22T17:00:00"}, "needs a UTC offset"),
    ({"set_limit_w": 1000, "t": "tomorrow"}, "not ISO 8601"),
    ({"limit": 1000}, "unknown field 'limit'"),
    ({"get": "nope"}, "get: one of"),
])
def test_bad_commands_are_refused_and_the_substation_goes_on(command: dict[str, Any],
                                                              error: str) -> None:
    async def body() -> None:
        async with Substation() as substation:
            with pytest.raises(SubstationError, match=re.escape(error)):
                await substation.command(**command)
            assert (await substation.set_limit(9000.0))["limit_w"] == 9000.0
            assert await substation.get("limit_w") == 9000.0

    go(body)


def test_set_limit_needs_an_aware_time() -> None:
    async def body() -> None:
        async with Substation() as substation:
            with pytest.raises(ValueError, match="timezone-aware"):
                await substation.set_limit(9000.0, datetime(2026, 11, 22, 17, 0))

    go(body)
