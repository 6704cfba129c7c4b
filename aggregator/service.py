"""The running service: the CSMS, the DSO adapters, the book, the controller, the ledger.

``Service`` wires what the configuration names and runs it until stopped.  Meter samples
go to the ledger first (durably), then to the controller, then to telemetry; a stop
(SIGTERM in ``gridflex serve``) closes the stations' door, drains every acknowledged
sample into the ledger and only then closes it, so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from adapters.ocpp.csms import Csms, CsmsConfig, StationEvent
from aggregator.clock import Clock, utc_now
from aggregator.constraints import ConstraintBook
from aggregator.controller import Controller
from aggregator.dispatch import Delivery, dispatch
from aggregator.dr_events import record_event
from aggregator.ledger import Ledger
from aggregator.model import MeterSample, Schedule
from aggregator.plans import record_plan
from aggregator.service_config import ServiceConfig
from aggregator.session_journal import record_session_event
from aggregator.sessions import SessionTracker


class NodeMetering(NamedTuple):
    """What the EVs below a node metered: net power now (+ import), energy registers."""

    power_kw: float
    imported_kwh: float
    exported_kwh: float


log = logging.getLogger("gridflex.service")


class MeterFanout:
    """The CSMS's meter sink: the ledger (must succeed, else the CSMS retries), then the
    controller and telemetry (best effort: their failures are logged, never block)."""

    def __init__(self, ledger: Ledger, observers: Sequence[Callable[[Sequence[MeterSample]],
                                                                    Any]]) -> None:
        self.ledger = ledger
        self.observers = list(observers)
        self.stored = 0

    async def put(self, samples: Sequence[MeterSample]) -> None:
        self.stored += await asyncio.to_thread(self.ledger.add_samples, samples)
        for observer in self.observers:
            try:
                result = observer(samples)
                if isinstance(result, Awaitable):
                    await result
            except Exception:
                log.exception("meter observer %r failed", observer)


class Service:
    """gridflex as configured: start(), then stop() (or run until an event is set)."""

    def __init__(self, config: ServiceConfig, *, clock: Clock = utc_now,
                 ledger: Ledger | None = None) -> None:
        self.config = config
        self.clock = clock
        self.started_at = clock()
        self.ledger = ledger or Ledger(config.ledger_url)
        self.book = ConstraintBook(started_at=self.started_at, defaults=config.safe_defaults)
        self.tracker = SessionTracker(config.evses, config.session_defaults)
        self.telemetry: Any = None
        observers: list[Callable[[Sequence[MeterSample]], Any]] = []
        if config.influx is not None:
            from adapters.influx.sink import TelemetrySink
            self.telemetry = TelemetrySink(config.influx.url, token=config.influx.token,
                                           org=config.influx.org, bucket=config.influx.bucket)
            observers.append(self.telemetry.put)
        self.meter = MeterFanout(self.ledger, observers)
        self.csms = Csms(CsmsConfig(stations=config.stations, host=config.ocpp_host,
                                    port=config.ocpp_port, authorized_ids=config.authorized_ids),
                         self.meter, listener=self._station_event)
        self.controller = Controller(config.tree, self.book, self.tracker, self._dispatch,
                                     clock=clock, settings=config.controller,
                                     plan_settings=config.plan,
                                     journal=functools.partial(record_plan, self.ledger))
        self.meter.observers.insert(0, self.controller.on_samples)
        self.adapters: dict[str, Any] = {}
        self._build_adapters()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._journaling: set[asyncio.Task[None]] = set()  # session events being journaled
        self.ocpp_port: int | None = None
        self.api_port: int | None = None
        self._api: Any = None

    def _build_adapters(self) -> None:
        c = self.config
        if c.openadr is not None:
            from adapters.openadr.ven import NodeTelemetry, Ven

            def telemetry(node: str) -> NodeTelemetry:
                metered = self.node_metering(node)
                return NodeTelemetry(power_w=metered.power_kw * 1e3,
                                     energy_wh=metered.imported_kwh * 1e3)

            self.adapters["openadr"] = Ven(
                c.openadr, self.book, telemetry=telemetry, clock=self.clock,
                baseline_kw=self.planned_node_kw,
                journal=functools.partial(record_event, self.ledger))
        if c.ieee2030_5 is not None:
            from adapters.ieee2030_5.client import Sep2Client, SiteTelemetry
            sites = {name: site.nodes.site for name, site in c.ieee2030_5.sites.items()}

            def site_telemetry(name: str) -> SiteTelemetry:
                """The EV load gridflex meters at the site (its MirrorUsagePoint)."""
                metered = self.node_metering(sites[name])
                return SiteTelemetry(power_w=metered.power_kw * 1e3,
                                     import_wh=metered.imported_kwh * 1e3,
                                     export_wh=metered.exported_kwh * 1e3, at=self.clock())

            self.adapters["ieee2030_5"] = Sep2Client(c.ieee2030_5, self.book, clock=self.clock,
                                                     telemetry=site_telemetry)
        if c.iec61850 is not None:
            from adapters.iec61850.client import Iec61850Source
            self.adapters["iec61850"] = Iec61850Source(c.iec61850, self.book, clock=self.clock)

    # -- what the parts ask of each other ------------------------------------------------
    def _station_event(self, event: StationEvent) -> None:
        self.controller.on_station_event(event)  # control first: the journal never delays it
        if event.kind not in ("started", "ended", "needs"):
            return
        evse = self.config.evses.get((event.station_id, event.evse_number))
        evse_id, received_at = (None if evse is None else evse.evse_id), self.clock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: journal here
            self._journal_session(event, evse_id, received_at)
            return
        task = loop.create_task(asyncio.to_thread(
            self._journal_session, event, evse_id, received_at))
        self._journaling.add(task)
        task.add_done_callback(self._journaling.discard)

    def _journal_session(self, event: StationEvent, evse_id: str | None,
                         received_at: datetime) -> None:
        """Journal a session event; a ledger outage is logged, never stops control."""
        try:
            record_session_event(self.ledger, event, evse_id, received_at)
        except Exception:
            log.exception("%s event of %s/%s transaction %s could not be journaled",
                          event.kind, event.station_id, event.evse_number,
                          event.transaction_id)

    async def _dispatch(self, schedule: Schedule) -> list[Delivery]:
        # the controller still holds the plan the stations follow: decreases go out first
        return await dispatch(self.csms, schedule, {e.evse_id: e for e in self.config.tree.evses},
                              previous=self.controller.schedule)

    def node_metering(self, node_id: str) -> NodeMetering:
        """Measured EV power now and energy imported and exported so far below ``node_id``."""
        tree = self.config.tree
        below = {e.evse_id for e in tree.evses if node_id in (e.evse_id, *tree.ancestors(
            e.node_id))}
        live = [s for s in self.tracker.live.values() if s.session.evse_id in below]
        done = [s for s in self.tracker.finished if s.session.evse_id in below]
        return NodeMetering(sum(s.power_kw or 0.0 for s in live),
                            sum(s.imported_kwh for s in (*live, *done)),
                            sum(s.exported_kwh for s in (*live, *done)))

    def planned_node_kw(self, node_id: str, start: datetime, end: datetime) -> float:
        """The current plan's mean EV load below ``node_id`` over a window (the VEN's
        baseline for relative LOAD_DISPATCH signals); 0 before the first plan."""
        return self.controller.planned_node_kw(node_id, start, end)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the stations' door, the API and the DSO links, then start control."""
        from aggregator.api import OperatorApi

        self.ocpp_port = await self.csms.start()
        self._api = OperatorApi(self)
        self.api_port = await self._api.start(self.config.api_host, self.config.api_port)
        for name, adapter in self.adapters.items():
            self._tasks.append(asyncio.create_task(self._run_adapter(name, adapter)))
        self._tasks.append(asyncio.create_task(self.controller.run(self._stop)))
        log.info("gridflex serving: OCPP on %s:%s, API on %s:%s, DSO links %s",
                 self.config.ocpp_host, self.ocpp_port, self.config.api_host, self.api_port,
                 sorted(self.adapters) or "none")

    async def _run_adapter(self, name: str, adapter: Any) -> None:
        try:
            if name == "openadr":
                await adapter.register()
                await adapter.run()
            elif name == "ieee2030_5":
                await adapter.run(self._stop)
            else:
                await adapter.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("DSO adapter %s stopped; its last limits hold until they expire, "
                          "then its safe defaults", name)
            self.book.link_lost(name, self.clock(), "adapter stopped on an error")

    async def stop(self) -> None:
        """Stop control and the DSO links, drain every acknowledged sample, close."""
        self._stop.set()
        for name, adapter in self.adapters.items():
            with contextlib.suppress(Exception):
                if name == "ieee2030_5":
                    await adapter.close()
                elif hasattr(adapter, "stop"):
                    await adapter.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._journaling, return_exceptions=True)  # let them land
        await self.csms.stop()  # hands every queued sample to the ledger first
        if self._api is not None:
            await self._api.stop()
        if self.telemetry is not None:
            self.telemetry.close()
        log.info("gridflex stopped: %d meter samples stored this run", self.meter.stored)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop``, stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
