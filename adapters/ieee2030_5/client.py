"""The IEEE 2030.5 / CSIP-AUS aggregator client: discovery, registration, polling, metering.

One client speaks for every configured site (each an EndDevice of the utility server).  All
resources are found by following hrefs from DeviceCapability; every list is paged with
``s``/``l`` and capped; bodies are read with a size cap while streaming.  Each poll
evaluates the sites' DER programs at *server* time (:mod:`.controls`), publishes the limits
to the constraint book, and POSTs the Responses owed (recorded only after a 2xx).

The sites are walked concurrently over one kept-alive connection pool, with at most
``max_concurrency`` requests in flight (a sequential walk of 1,000 sites is some 11,000
round trips).  With a ``state_file`` the Responses sent and each site's MirrorUsagePoint
href are saved (atomically) and loaded at start (:mod:`.state`), so a restart neither
repeats a Response nor creates a second MirrorUsagePoint.  A change is saved at once,
unless the file was written less than ``STATE_SAVE_INTERVAL_S`` ago (a walk of 1,000 sites
would rewrite it 1,000 times); every poll, readings round and ``close`` end with a save.

Expiry (what the book keeps when the link is lost): limits from a DERControl stay in force
until the event ends (CSIP-AUS: a client keeps executing the last control through a comms
outage); limits from a DefaultDERControl expire ``default_ttl_s`` (at least two poll
intervals) after the poll that saw them, after which the book's configured safe default
applies.  Constraint windows are moved from server time to the local clock (``- offset``)
because the book and the planner run on the local clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from envoy_schema.server.schema.csip_aus.connection_point import ConnectionPointRequest
from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlListResponse,
    DERControlResponse,
    DERProgramListResponse,
    DERProgramResponse,
)
from envoy_schema.server.schema.sep2.device_capability import DeviceCapabilityResponse
from envoy_schema.server.schema.sep2.end_device import (
    EndDeviceListResponse,
    EndDeviceRequest,
    EndDeviceResponse,
)
from envoy_schema.server.schema.sep2.error import ErrorResponse
from envoy_schema.server.schema.sep2.function_set_assignments import (
    FunctionSetAssignmentsListResponse,
)
from envoy_schema.server.schema.sep2.metering import Reading, ReadingType
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReading,
    MirrorMeterReadingListRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.time import TimeResponse
from envoy_schema.server.schema.sep2.types import (
    AccumulationBehaviourType,
    CommodityType,
    DataQualifierType,
    DateTimeIntervalType,
    FlowDirectionType,
    KindType,
    PhaseCode,
    ServiceKind,
    UomType,
)
from pydantic_xml import BaseXmlModel
from yarl import URL

from adapters.ieee2030_5.config import ClientConfig, SiteConfig
from adapters.ieee2030_5.controls import (
    SOURCE,
    Evaluation,
    Program,
    ResponseLog,
    evaluate,
    program_from_models,
    scope_for,
    to_constraints,
)
from adapters.ieee2030_5.identity import lfdi_key
from adapters.ieee2030_5.state import SavedSite
from adapters.ieee2030_5.state import load as load_state
from adapters.ieee2030_5.state import save as save_state
from adapters.ieee2030_5.xml import (
    CSIPAUS_NS,
    SEP_XML,
    Sep2Error,
    parse_document,
    serialise,
)
from aggregator.constraints import ConstraintSink
from aggregator.model import GridConstraint, require_utc

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseXmlModel)
R = TypeVar("R")
DEFAULT_POLL_RATE_S = 900.0  # 2030.5 default pollRate
DEFAULT_POST_RATE_S = 300.0
STATE_SAVE_INTERVAL_S = 1.0  # the most a hard crash can lose of the state file's changes
MAX_REDIRECTS = 3
CCM8_CIPHER = "ECDHE-ECDSA-AES128-CCM8"
_READ_CHUNK = 64 * 1024

Telemetry = Callable[[str], "SiteTelemetry | Awaitable[SiteTelemetry | None] | None"]
"""site name -> its latest meter values (or None when there is nothing new)."""


@dataclass(frozen=True, slots=True)
class SiteTelemetry:
    """One meter sample of a site: real power (+ import), energy registers, local UTC time."""

    power_w: float
    import_wh: float
    export_wh: float
    at: datetime


class Sep2LinkError(Exception):
    """The server could not be reached or failed (connection, TLS, timeout, 5xx)."""


class Sep2BackoffError(Sep2LinkError):
    """The server asked to wait (429/503); ``retry_after_s`` is how long."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Sep2HttpError(Sep2Error):
    """A 4xx answer (or an unusable 2xx/3xx); ``status`` and the server's own words."""

    def __init__(self, href: str, status: int, problem: str) -> None:
        super().__init__(href, f"HTTP {status}: {problem}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Reply:
    """A response read within the size cap."""

    status: int
    body: bytes
    content_type: str | None
    location: str | None


@dataclass
class SiteState:
    """What the client knows of one site's EndDevice between polls."""

    edev_href: str | None = None
    server_lfdi: str | None = None  # the LFDI as the server spells it (for Responses)
    device_category: int | None = None
    post_rate_s: float | None = None
    response_log: ResponseLog = field(default_factory=ResponseLog)
    mup_href: str | None = None
    last_evaluation: Evaluation | None = None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll achieved: ``ok`` only if every site was read and published."""

    ok: bool
    reason: str
    published: Mapping[str, int] = field(default_factory=dict)  # site -> constraint count
    responses_sent: int = 0
    skipped: bool = False


def tls_context(config: ClientConfig) -> ssl.SSLContext:
    """TLS 1.2 only, ECDHE-ECDSA-AES128-CCM8, the client certificate, the server's CA.

    OpenSSL 3.2+ puts CCM8 at security level 0; asking for it there needs ``@SECLEVEL=0``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.set_ciphers(CCM8_CIPHER)
    except ssl.SSLError:
        context.set_ciphers(f"{CCM8_CIPHER}:@SECLEVEL=0")
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if config.ca_file is not None:
        context.load_verify_locations(cafile=str(config.ca_file))
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Sep2Client:
    """Polls a 2030.5 server for every configured site and feeds the constraint book."""

    def __init__(self, config: ClientConfig, sink: ConstraintSink, *,
                 telemetry: Telemetry | None = None,
                 clock: Callable[[], datetime] = _utcnow,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.sink = sink
        self.telemetry = telemetry
        self.clock = clock
        self.sites: dict[str, SiteState] = {name: SiteState() for name in config.sites}
        if config.state_file is not None:
            lfdis = {name: site.lfdi for name, site in config.sites.items()}
            for name, saved in load_state(config.state_file, config.server_url, lfdis).items():
                self.sites[name].response_log = saved.response_log
                self.sites[name].mup_href = saved.mup_href
        self._requests = asyncio.Semaphore(config.max_concurrency)
        self._state_dirty = False
        self._state_saved_at = -math.inf  # time.monotonic() of the last write
        self.offset = timedelta(0)  # server time - local time
        self.next_poll_s = config.poll_rate_s or DEFAULT_POLL_RATE_S
        self.backoff_until: datetime | None = None
        self.csipaus_namespace = CSIPAUS_NS
        self._origin = URL(config.server_url).origin()
        self._ssl = ssl_context if ssl_context is not None else (
            tls_context(config) if config.uses_tls else None)
        self._session: aiohttp.ClientSession | None = None
        self._dcap: DeviceCapabilityResponse | None = None
        # bodies read by this poll and the last one -> their models (parsing is most of a
        # poll's CPU, and most bodies do not change between polls)
        self._parsed: dict[tuple[str, type[BaseXmlModel], str | None, bytes], BaseXmlModel] = {}
        self._parsed_before = self._parsed

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Sep2Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._save_state()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def server_now(self) -> datetime:
        """The server's clock as last measured (local clock + offset)."""
        return require_utc(self.clock(), "clock") + self.offset

    @property
    def post_rate_s(self) -> float:
        """How often readings are posted: the override, else the sites' postRate, else 300 s."""
        if self.config.post_rate_s is not None:
            return self.config.post_rate_s
        rates = [state.post_rate_s for state in self.sites.values() if state.post_rate_s]
        return max(self.config.min_poll_s, min(rates)) if rates else DEFAULT_POST_RATE_S

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at pollRate and post readings at postRate until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        next_poll = next_post = loop.time()
        while not stop.is_set():
            now = loop.time()
            if now >= next_poll:
                await self.poll_once()
                next_poll = loop.time() + self.next_poll_s
            if self.telemetry is not None and now >= next_post:
                await self.post_readings_once()
                next_post = loop.time() + self.post_rate_s
            wake = next_poll if self.telemetry is None else min(next_poll, next_post)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))

    # -- polling ------------------------------------------------------------------------
    async def poll_once(self) -> PollOutcome:
        """One full pass: dcap, time, EndDevices (registering missing sites), programs,
        limits into the book, Responses out.  Never raises for server or network trouble."""
        local_now = require_utc(self.clock(), "clock")
        if self.backoff_until is not None and local_now < self.backoff_until:
            return PollOutcome(False, f"server asked to wait until "
                                      f"{self.backoff_until.isoformat()}", skipped=True)
        self.backoff_until = None
        try:
            return await self._poll()
        except Sep2BackoffError as exc:
            self.backoff_until = local_now + timedelta(seconds=exc.retry_after_s)
            self.next_poll_s = max(self.next_poll_s, exc.retry_after_s)
            return self._lost(str(exc))
        except Sep2LinkError as exc:
            return self._lost(str(exc))
        except Sep2Error as exc:
            log.error("ieee2030_5: poll failed: %s", exc)
            return self._lost(f"protocol error: {exc}")
        except Exception as exc:  # a bug or a surprise must not stop the service
            log.exception("ieee2030_5: poll failed unexpectedly")
            return self._lost(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._save_state()

    def _lost(self, reason: str) -> PollOutcome:
        log.warning("ieee2030_5: link lost: %s", reason)
        self.sink.link_lost(SOURCE, require_utc(self.clock(), "clock"), reason)
        return PollOutcome(False, reason)

    async def _poll(self) -> PollOutcome:
        self._parsed_before, self._parsed = self._parsed, {}  # what this poll reads is kept
        rates: list[int] = []
        dcap = await self._discover(rates)
        edevs = await self._end_devices(dcap, rates)
        by_lfdi = {lfdi_key(item.lFDI): item for item in reversed(edevs) if item.lFDI}
        problems: list[str] = []

        async def walk(site: SiteConfig) -> list[Program]:
            edev = await self._ensure_registered(site, dcap, by_lfdi.get(lfdi_key(site.lfdi)))
            return await self._programs(edev, rates)

        walked = await self._each_site(walk, problems)
        positive = [rate for rate in rates if rate > 0]
        self.next_poll_s = self.config.poll_rate_s or max(
            self.config.min_poll_s, float(min(positive)) if positive else DEFAULT_POLL_RATE_S)

        async def apply(site: SiteConfig) -> tuple[int, int]:
            return await self._apply(site, walked[site.name])

        applied = await self._each_site(apply, problems, only=walked)
        published = {name: count for name, (count, _) in applied.items()}
        sent = sum(count for _, count in applied.values())
        if problems:
            return dataclasses.replace(self._lost("; ".join(problems)), published=published,
                                       responses_sent=sent)
        self.sink.link_up(SOURCE, require_utc(self.clock(), "clock"))
        return PollOutcome(True, "ok", published, sent)

    async def _discover(self, rates: list[int]) -> DeviceCapabilityResponse:
        """DeviceCapability (the one configured entry point) and the server clock."""
        dcap_url = str(URL(self.config.server_url + self.config.dcap_path))
        reply = await self._request("GET", dcap_url)
        parsed = parse_document(reply.body, DeviceCapabilityResponse, reply.content_type,
                                max_body_bytes=self.config.max_body_bytes)
        dcap = parsed.model
        if parsed.csipaus_namespace is not None:
            self.csipaus_namespace = parsed.csipaus_namespace
        if dcap.pollRate:
            rates.append(dcap.pollRate)
        if dcap.TimeLink is not None:
            time = await self._get(dcap.TimeLink.href, TimeResponse)
            self.offset = (datetime.fromtimestamp(time.currentTime, UTC)
                           - require_utc(self.clock(), "clock"))
        else:
            log.warning("ieee2030_5: DeviceCapability has no TimeLink; using the local clock")
        self._dcap = dcap
        return dcap

    async def _end_devices(self, dcap: DeviceCapabilityResponse,
                           rates: list[int]) -> list[EndDeviceResponse]:
        if dcap.EndDeviceListLink is None:
            raise Sep2Error("DeviceCapability.EndDeviceListLink", "missing")
        # every configured site must be found, however many: one beyond the cap would be
        # registered again on every poll
        cap = max(self.config.max_list_items, 2 * len(self.config.sites))
        items, rate = await self._get_list(dcap.EndDeviceListLink.href, EndDeviceListResponse,
                                           "EndDevice", cap)
        if rate:
            rates.append(rate)
        return items

    async def _each_site(self, call: Callable[[SiteConfig], Awaitable[R]], problems: list[str],
                         only: Collection[str] | None = None) -> dict[str, R]:
        """``call`` for every site (or those in ``only``) concurrently; answers by site name.

        Requests stay bounded by ``max_concurrency`` (see :meth:`_send`).  A site's
        protocol error is logged and added to ``problems`` (the others go on); a link error
        cancels the rest and is raised, as a sequential walk would stop at it.
        """
        sites = [site for name, site in self.config.sites.items() if only is None or name in only]
        found: dict[str, R] = {}

        async def one(site: SiteConfig) -> None:
            try:
                found[site.name] = await call(site)
            except Sep2Error as exc:  # one site's bad data must not stop the others
                log.error("ieee2030_5: site %s: %s", site.name, exc)
                problems.append(f"site {site.name}: {exc}")

        try:
            async with asyncio.TaskGroup() as group:
                for site in sites:
                    group.create_task(one(site))
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        return {site.name: found[site.name] for site in sites if site.name in found}

    async def _ensure_registered(self, site: SiteConfig, dcap: DeviceCapabilityResponse,
                                 edev: EndDeviceResponse | None) -> EndDeviceResponse:
        """The site's EndDevice (the listed one with its LFDI); registered when missing."""
        state = self.sites[site.name]
        if edev is None:
            edev = await self._register(site, dcap)
        state.edev_href = edev.href
        state.server_lfdi = edev.lFDI or site.lfdi
        state.device_category = int(edev.deviceCategory, 16) if edev.deviceCategory else None
        state.post_rate_s = float(edev.postRate) if edev.postRate else None
        return edev

    async def _register(self, site: SiteConfig,
                        dcap: DeviceCapabilityResponse) -> EndDeviceResponse:
        """POST the EndDevice, GET it at the Location, PUT its ConnectionPoint (NMI)."""
        assert dcap.EndDeviceListLink is not None
        request = EndDeviceRequest(lFDI=site.lfdi, sFDI=site.sfdi,
                                   deviceCategory=site.device_category,
                                   changedTime=int(self.server_now().timestamp()),
                                   enabled=True)
        reply = await self._request("POST", self._url(dcap.EndDeviceListLink.href),
                                    serialise(request, csipaus_namespace=self.csipaus_namespace))
        if reply.location is None:
            raise Sep2HttpError(dcap.EndDeviceListLink.href, reply.status,
                                "EndDevice created without a Location header")
        log.info("ieee2030_5: site %s registered as %s", site.name, reply.location)
        edev = await self._get(reply.location, EndDeviceResponse)
        if site.nmi is not None:
            link = edev.ConnectionPointLink
            if link is None:
                log.warning("ieee2030_5: site %s: EndDevice %s has no ConnectionPointLink; "
                            "NMI %s not sent", site.name, reply.location, site.nmi)
            else:
                body = serialise(ConnectionPointRequest(id=site.nmi),
                                 csipaus_namespace=self.csipaus_namespace)
                await self._request("PUT", self._url(link.href), body)
        return edev

    async def _programs(self, edev: EndDeviceResponse, rates: list[int]) -> list[Program]:
        """FunctionSetAssignments -> DERPrograms -> controls, active controls and default."""
        if edev.FunctionSetAssignmentsListLink is None:
            return []
        fsas, rate = await self._get_list(edev.FunctionSetAssignmentsListLink.href,
                                          FunctionSetAssignmentsListResponse,
                                          "FunctionSetAssignments")
        if rate:
            rates.append(rate)
        found: dict[str, DERProgramResponse] = {}
        for fsa in fsas:
            if fsa.DERProgramListLink is None:
                continue
            derps, rate = await self._get_list(fsa.DERProgramListLink.href,
                                               DERProgramListResponse, "DERProgram")
            if rate:
                rates.append(rate)
            for derp in derps:
                found.setdefault(derp.href or derp.mRID, derp)
        programs: list[Program] = []
        for derp in found.values():
            controls: dict[str, DERControlResponse] = {}
            for link in (derp.DERControlListLink, derp.ActiveDERControlListLink):
                if link is None:
                    continue
                items, _ = await self._get_list(link.href, DERControlListResponse, "DERControl")
                for item in items:
                    controls.setdefault(item.mRID, item)
            default = None
            if derp.DefaultDERControlLink is not None:
                try:
                    default = await self._get(derp.DefaultDERControlLink.href, DefaultDERControl)
                except Sep2HttpError as exc:
                    if exc.status != 404:
                        raise
            programs.append(program_from_models(derp, controls.values(), default))
        return programs

    async def _apply(self, site: SiteConfig, programs: Sequence[Program]) -> tuple[int, int]:
        """Evaluate at server time, publish the limits, send the Responses owed."""
        state = self.sites[site.name]
        server_now = self.server_now()
        local_now = require_utc(self.clock(), "clock")
        evaluation = evaluate(programs, server_now, timedelta(seconds=self.config.horizon_s),
                              seed=site.lfdi, log=state.response_log,
                              supported=site.nodes.supported(),
                              device_category=state.device_category)
        for problem in evaluation.problems:
            log.warning("ieee2030_5: site %s: %s", site.name, problem)
        default_expiry = local_now + timedelta(seconds=max(self.config.default_ttl_s,
                                                           2 * self.next_poll_s))
        constraints: list[GridConstraint] = []
        for piece in evaluation.pieces:
            one = dataclasses.replace(evaluation, pieces=(piece,))
            for item in to_constraints(one, site.nodes, received_at=local_now,
                                       priority=self.config.priority):
                constraints.append(dataclasses.replace(
                    item, start=item.start - self.offset, end=item.end - self.offset,
                    expires_at=default_expiry if piece.default else None))
        self.sink.publish(SOURCE, scope_for(site.nodes), constraints, local_now)
        state.last_evaluation = evaluation
        response_log = evaluation.log
        sent = 0
        try:
            for owed in evaluation.responses:
                if owed.reply_to is None:
                    continue
                model = owed.to_model(state.server_lfdi or site.lfdi, server_now)
                body = serialise(model, csipaus_namespace=self.csipaus_namespace)
                try:
                    await self._request("POST", self._url(owed.reply_to), body)
                except Sep2Error as exc:  # refused: stays owed, tried again next poll
                    log.error("ieee2030_5: site %s: Response %s for %s refused: %s",
                              site.name, owed.status.name, owed.subject, exc)
                    continue
                response_log = response_log.with_sent(owed)
                sent += 1
        finally:  # what was sent is recorded (and saved) even if the link drops half-way
            keep = {control.mrid for program in programs for control in program.controls}
            before, state.response_log = state.response_log, response_log.pruned(keep)
            if state.response_log != before:
                self._state_changed()
        return len(constraints), sent

    # -- metering -----------------------------------------------------------------------
    async def post_readings_once(self) -> dict[str, bool]:
        """Per site: create its MirrorUsagePoint if needed, then POST the latest readings."""
        telemetry = self.telemetry
        if telemetry is None:
            return {}
        try:
            dcap = self._dcap or await self._discover([])
        except (Sep2LinkError, Sep2Error) as exc:
            log.error("ieee2030_5: readings not posted: %s", exc)
            return {name: False for name in self.config.sites}
        results: dict[str, bool] = {}
        try:
            for name, site in self.config.sites.items():
                try:
                    sample = telemetry(name)
                    if asyncio.iscoroutine(sample) or isinstance(sample, asyncio.Future):
                        sample = await sample
                    if sample is None:
                        continue
                    if not isinstance(sample, SiteTelemetry):
                        raise Sep2Error("telemetry", f"expected SiteTelemetry, got "
                                                     f"{type(sample).__name__}")
                    await self._post_readings(site, dcap, sample)
                    results[name] = True
                except (Sep2LinkError, Sep2Error) as exc:
                    log.error("ieee2030_5: site %s: readings not posted: %s", name, exc)
                    results[name] = False
        finally:  # MirrorUsagePoints created this round
            self._save_state()
        return results

    async def _post_readings(self, site: SiteConfig, dcap: DeviceCapabilityResponse,
                             sample: SiteTelemetry) -> None:
        state = self.sites[site.name]
        interval_s = int(self.post_rate_s)
        start = int((require_utc(sample.at, "at") + self.offset).timestamp())
        values = (round(sample.power_w), round(sample.import_wh), round(sample.export_wh))
        mrids = _meter_mrids(site.lfdi)
        readings = [
            MirrorMeterReading(mRID=mrid, reading=Reading(
                value=value, qualityFlags="01",
                timePeriod=DateTimeIntervalType(start=start, duration=interval_s)))
            for mrid, value in zip(mrids[1:], values, strict=True)]
        if state.mup_href is None:
            if dcap.MirrorUsagePointListLink is None:
                raise Sep2Error("DeviceCapability.MirrorUsagePointListLink", "missing")
            for reading, (description, reading_type) in zip(readings, _reading_types(interval_s),
                                                            strict=True):
                reading.description = description
                reading.readingType = reading_type
            mup = MirrorUsagePointRequest(
                mRID=mrids[0], description=f"gridflex {site.name}"[:32], roleFlags="03",
                serviceCategoryKind=ServiceKind.ELECTRICITY, status=1,
                deviceLFDI=state.server_lfdi or site.lfdi, mirrorMeterReadings=readings,
                postRate=interval_s)
            reply = await self._request("POST", self._url(dcap.MirrorUsagePointListLink.href),
                                        serialise(mup, csipaus_namespace=self.csipaus_namespace))
            if reply.location is None:
                raise Sep2HttpError(dcap.MirrorUsagePointListLink.href, reply.status,
                                    "MirrorUsagePoint created without a Location header")
            state.mup_href = reply.location
            self._state_changed()
            return  # the readings travelled with the MirrorUsagePoint
        body = serialise(MirrorMeterReadingListRequest(mirrorMeterReadings=readings),
                         csipaus_namespace=self.csipaus_namespace)
        await self._request("POST", self._url(state.mup_href), body)

    # -- durable state ------------------------------------------------------------------
    def _state_changed(self) -> None:
        """Save a change now, unless the file was written less than a save interval ago
        (then the end of the poll or readings round saves it)."""
        self._state_dirty = True
        if time.monotonic() - self._state_saved_at >= STATE_SAVE_INTERVAL_S:
            self._save_state()

    def _save_state(self) -> None:
        """Write every site's Responses sent and MirrorUsagePoint to ``state_file``, if any
        changed since the last write.

        A failed write is logged, not raised (it is tried again on the next change): what
        it protects against (a repeat after a restart) is smaller than stopping the poll.
        """
        path = self.config.state_file
        if path is None or not self._state_dirty:
            return
        sites = {name: SavedSite(self.config.sites[name].lfdi, state.response_log,
                                 state.mup_href) for name, state in self.sites.items()}
        try:
            save_state(path, self.config.server_url, sites)
        except (OSError, TypeError, ValueError) as exc:
            log.error("ieee2030_5: state file %s not written: %s", path, exc)
            return
        self._state_dirty = False
        self._state_saved_at = time.monotonic()

    # -- HTTP ---------------------------------------------------------------------------
    def _url(self, href: str) -> str:
        """An href resolved against the server; other hosts are refused."""
        url = self._origin.join(URL(href))
        if url.origin() != self._origin:
            raise Sep2Error("href", f"{href!r} points to another host than "
                                    f"{self._origin} (refused)")
        return str(url)

    async def _get(self, href: str, model: type[T], query: Mapping[str, int] | None = None) -> T:
        url = URL(self._url(href))
        if query:
            url = url.update_query({key: str(value) for key, value in query.items()})
        reply = await self._request("GET", str(url))
        key = (str(url), model, reply.content_type, hashlib.sha256(reply.body).digest())
        known = self._parsed_before.get(key)
        if known is None:  # a body unchanged since the last poll is not parsed again
            known = parse_document(reply.body, model, reply.content_type,
                                   max_body_bytes=self.config.max_body_bytes).model
        self._parsed[key] = known
        return known  # type: ignore[return-value]  # keyed by ``model``

    async def _get_list(self, href: str, model: type[T], items_field: str,
                        cap: int | None = None) -> tuple[list[Any], int | None]:
        """Every item of a list, paged with s/l, de-duplicated by href, capped (at
        ``max_list_items`` unless ``cap`` is given)."""
        cap = cap or self.config.max_list_items
        items: list[Any] = []
        seen: set[str] = set()
        start = 0
        rate: int | None = None
        while True:
            limit = min(self.config.page_size, cap - len(items))
            page = await self._get(href, model, {"s": start, "l": limit})
            rate = getattr(page, "pollRate", None) or rate
            got = getattr(page, items_field) or []
            for item in got[:limit]:
                key = getattr(item, "href", None) or getattr(item, "mRID", None) or str(id(item))
                if key not in seen:
                    seen.add(key)
                    items.append(item)
            start += len(got)
            total = int(getattr(page, "all_", 0))
            if not got or start >= total or len(items) >= cap:
                if total > cap:
                    log.warning("ieee2030_5: %s lists %d items; only the first %d are read",
                                href, total, cap)
                return items, rate

    async def _request(self, method: str, url: str, body: bytes | None = None) -> Reply:
        """One request; same-host redirects followed, status mapped to the error kinds."""
        for _ in range(MAX_REDIRECTS + 1):
            reply = await self._send(method, url, body)
            if 300 <= reply.status < 400:
                if reply.location is None or method != "GET":
                    raise Sep2HttpError(url, reply.status, "redirect refused")
                target = URL(url).join(URL(reply.location))
                if target.origin() != self._origin:
                    raise Sep2HttpError(url, reply.status, f"cross-host redirect to "
                                                           f"{target.origin()} refused")
                url = str(target)
                continue
            return reply
        raise Sep2HttpError(url, 310, f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, method: str, url: str, body: bytes | None) -> Reply:
        session = self._open()
        headers = {"Accept": SEP_XML}
        if body is not None:
            headers["Content-Type"] = SEP_XML
        try:
            async with self._requests, session.request(method, url, data=body, headers=headers,
                                       allow_redirects=False, ssl=self._ssl or False) as resp:
                status = resp.status
                content_type = resp.headers.get("Content-Type")
                location = resp.headers.get("Location")
                retry_after = resp.headers.get("Retry-After")
                data = await self._read_capped(resp, url)
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
            raise Sep2LinkError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if status in (429, 503):
            wait_s = _retry_after_s(retry_after, require_utc(self.clock(), "clock"))
            raise Sep2BackoffError(f"{method} {url}: HTTP {status}, retry after {wait_s:g} s"
                              f"{_detail(data, content_type)}", wait_s)
        if status >= 500:
            raise Sep2LinkError(f"{method} {url}: HTTP {status}{_detail(data, content_type)}")
        if status >= 400:
            raise Sep2HttpError(url, status, _detail(data, content_type).lstrip(": ")
                                or "no detail")
        return Reply(status, data, content_type, location)

    async def _read_capped(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        """The body, refused as soon as it passes the cap (never read whole first)."""
        cap = self.config.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise Sep2Error("body", f"{url}: Content-Length {resp.content_length} exceeds the "
                                    f"cap of {cap} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = await resp.content.read(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > cap:
                resp.close()
                raise Sep2Error("body", f"{url}: more than the cap of {cap} bytes")
            chunks.append(chunk)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency)  # kept alive
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=True,
                                                  connector=connector)
        return self._session


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed concurrent walk: a back-off request first (it
    carries the wait), else the first link error, else the first error."""
    leaves: list[BaseException] = []

    def flatten(item: BaseException) -> None:
        if isinstance(item, BaseExceptionGroup):
            for inner in item.exceptions:
                flatten(inner)
        else:
            leaves.append(item)

    flatten(group)
    for kind in (Sep2BackoffError, Sep2LinkError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _retry_after_s(value: str | None, now: datetime) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date); 60 s when missing or bad."""
    if value is None:
        return 60.0
    text = value.strip()
    if text.isdigit():
        return float(min(int(text), 86_400))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return 60.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - now).total_seconds(), 86_400.0))


def _detail(body: bytes, content_type: str | None) -> str:
    """The server's words in an error reply: an <Error>'s reasonCode/message, or the kind."""
    if not body:
        return ""
    try:
        error = parse_document(body, ErrorResponse, content_type).model
    except Sep2Error as exc:
        return f": {exc.problem}" if exc.field != "root" else ""
    text = f": <Error> reasonCode {int(error.reasonCode)}"
    if error.message:
        flat = " ".join(error.message.split())
        text += f": {flat[:300]}"
    return text


def _meter_mrids(site_lfdi: str) -> tuple[str, str, str, str]:
    """Stable mRIDs (usage point, power, import, export) so a re-POST is recognised."""
    def one(label: str) -> str:
        return hashlib.sha256(f"gridflex-mup\x1f{site_lfdi}\x1f{label}".encode()) \
            .hexdigest()[:32].upper()
    return one("mup"), one("power_w"), one("import_wh"), one("export_wh")


def _reading_types(interval_s: int) -> list[tuple[str, ReadingType]]:
    """Site real power (W, average), energy imported and exported (Wh, cumulative)."""
    def kind(power: bool, direction: FlowDirectionType) -> ReadingType:
        return ReadingType(
            accumulationBehaviour=(AccumulationBehaviourType.INSTANTANEOUS if power
                                   else AccumulationBehaviourType.CUMULATIVE),
            commodity=CommodityType.ELECTRICITY_SECONDARY_METERED_VALUE,
            dataQualifier=DataQualifierType.AVERAGE if power else DataQualifierType.NOT_APPLICABLE,
            flowDirection=direction, intervalLength=interval_s,
            kind=KindType.POWER if power else KindType.ENERGY, phase=PhaseCode.NOT_APPLICABLE,
            powerOfTenMultiplier=0,
            uom=UomType.REAL_POWER_WATT if power else UomType.REAL_ENERGY_WATT_HOURS)
    return [("Site real power W", kind(True, FlowDirectionType.FORWARD)),
            ("Site energy import Wh", kind(False, FlowDirectionType.FORWARD)),
            ("Site energy export Wh", kind(False, FlowDirectionType.REVERSE))]
