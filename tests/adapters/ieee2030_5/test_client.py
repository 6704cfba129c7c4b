"""The aggregator client against a loopback server that serves recorded envoy responses.

Server time is the recorded ``/tm`` (1795240392); the client's local clock runs 100 s ahead,
so every limit in the book is the server's window moved by +100 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from envoy_schema.server.schema.sep2.end_device import EndDeviceRequest
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReadingListRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.response import DERControlResponse as DERControlReply

from adapters.ieee2030_5.client import Sep2Client, SiteTelemetry
from adapters.ieee2030_5.config import ClientConfig, Sep2ConfigError
from adapters.ieee2030_5.controls import SOURCE
from adapters.ieee2030_5.loopback import SEP2, LoopbackServer
from adapters.ieee2030_5.xml import parse
from aggregator.constraints import SAFE_DEFAULT_SOURCE, ConstraintBook, SafeDefault

SERVER_NOW = 1795240392
LOCAL_AHEAD_S = 100
SITE_A_LFDI = "d1bae45aeabc08255827c6c778d71883eb3f59de"
SITE_B_LFDI = "38b05bc4bc270de68edddcf7d69a8b2c4efb54d1"
DERC1 = "30000000000000000000000100000000"
DERC1_END = 1795239900 + 3600


def local(server_epoch: int) -> datetime:
    """The local time at which the server's clock reads ``server_epoch``."""
    return datetime.fromtimestamp(server_epoch + LOCAL_AHEAD_S, UTC)


class Clock:
    """The client's local clock, moved by hand."""

    def __init__(self) -> None:
        self.now = local(SERVER_NOW)

    def __call__(self) -> datetime:
        return self.now


def settings(url: str, **extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "server_url": url, "allow_plain_http": url.startswith("http:"), "page_size": 1,
        "min_poll_s": 1, "request_timeout_s": 10, "max_body_bytes": 256 * 1024,
        "sites": {
            "a": {"node_id": "site-a", "evses": ["evse-a1"], "lfdi": SITE_A_LFDI.upper(),
                  "nmi": "QB01234567", "device_category": "200000"},
            "b": {"node_id": "site-b", "lfdi": SITE_B_LFDI, "nmi": "QB07654321",
                  "device_category": "800000"},
        },
    }
    table.update(extra)
    return table


@dataclasses.dataclass
class Rig:
    server: LoopbackServer
    client: Sep2Client
    book: ConstraintBook
    clock: Clock


def with_rig(registered: tuple[str, ...] = ("/edev/0", "/edev/1", "/edev/2"),
             version: str = "envoy-v2.2.0", telemetry: Any = None,
             **extra: Any) -> Callable[[Callable[[Rig], Awaitable[None]]], Callable[[], None]]:
    """A sync test running ``body(rig)`` in a fresh loop with server, client and book."""
    def decorate(body: Callable[[Rig], Awaitable[None]]) -> Callable[[], None]:
        def test() -> None:
            async def main() -> None:
                server = LoopbackServer(version=version, registered=registered)
                url = await server.start()
                clock = Clock()
                book = ConstraintBook(started_at=clock.now, defaults=(
                    SafeDefault(SOURCE, "site-a", import_max_kw=3.0),))
                config = ClientConfig.from_mapping(settings(url, **extra))
                client = Sep2Client(config, book, clock=clock, telemetry=telemetry)
                try:
                    await body(Rig(server, client, book, clock))
                finally:
                    await client.close()
                    await server.stop()
            asyncio.run(main())
        test.__name__ = test.__qualname__ = body.__name__
        return test
    return decorate


# -- configuration ------------------------------------------------------------------------

def test_config_names_the_field_at_fault() -> None:
    good = settings("https://utility.example", cert_file="c.pem", key_file="k.pem",
                    ca_file="ca.pem")
    config = ClientConfig.from_mapping(good)
    assert config.sites["a"].lfdi == SITE_A_LFDI  # normalised to lower case
    assert config.sites["a"].sfdi % 10 == (10 - sum(map(int, str(config.sites["a"].sfdi
                                                                  // 10))) % 10) % 10
    assert config.uses_tls and config.dcap_path == "/dcap"
    cases = [
        ({"server_url": "http://utility.example"}, "ieee2030_5.server_url"),
        ({"ca_file": None}, "ieee2030_5.ca_file"),
        ({"page_size": 0}, "ieee2030_5.page_size"),
        ({"dcap_path": "dcap"}, "ieee2030_5.dcap_path"),
        ({"bogus": 1}, "ieee2030_5.bogus"),
        ({"sites": {"a": {"node_id": "n", "lfdi": "xyz"}}}, "ieee2030_5.sites.a.lfdi"),
        ({"sites": {"a": {"node_id": "n", "lfdi": SITE_A_LFDI, "sfdi": 12}}},
         "ieee2030_5.sites.a.sfdi"),
        ({"sites": {"a": {"node_id": "n", "lfdi": SITE_A_LFDI, "evses": "e1"}}},
         "ieee2030_5.sites.a.evses"),
        ({"sites": {"a": {"node_id": "n", "lfdi": SITE_A_LFDI},
                    "b": {"node_id": "m", "lfdi": SITE_A_LFDI.upper()}}},
         "ieee2030_5.sites.b.lfdi"),
    ]
    for change, where in cases:
        bad = dict(good)
        bad.update(change)
        if change.get("ca_file", 1) is None:
            del bad["ca_file"]
        with pytest.raises(Sep2ConfigError) as caught:
            ClientConfig.from_mapping(bad)
        assert caught.value.field == where, (change, caught.value)


# -- discovery, registration, limits ----------------------------------------------------------

def _discovery(version: str) -> Callable[[], None]:
    @with_rig(registered=("/edev/0", "/edev/1"), version=version)
    async def run(rig: Rig) -> None:
        outcome = await rig.client.poll_once()
        assert outcome.ok, outcome.reason
        server = rig.server
        # site B was missing: POST EndDevice, GET it at the Location, PUT its ConnectionPoint
        posted = server.posts("/edev")
        assert len(posted) == 1
        edev = parse(posted[0].body, EndDeviceRequest)
        assert (edev.lFDI, edev.sFDI, edev.deviceCategory) == (
            SITE_B_LFDI, rig.client.config.sites["b"].sfdi, "800000")
        assert edev.changedTime == int(rig.client.server_now().timestamp())
        cp = server.posts("/edev/2/cp")
        assert len(cp) == 1 and b"<csipaus:connectionPointId>QB07654321<" in cp[0].body
        expected_ns = (b"https://csipaus.org/ns/v1.3" if version == "envoy-v2.2.0"
                       else b'"https://csipaus.org/ns"')
        assert expected_ns in cp[0].body
        assert server.posts("/edev/1/cp") == []  # site A was registered already
        gets = [(seen.path, seen.query) for seen in server.requests if seen.method == "GET"]
        assert gets[:2] == [("/dcap", {}), ("/tm", {})]
        # paging: l=1 pages until all items are read, s and l always sent on lists
        edev_pages = [query for path, query in gets if path == "/edev"]
        assert edev_pages == [{"s": "0", "l": "1"}, {"s": "1", "l": "1"}]
        assert all("s" in query and "l" in query for path, query in gets
                   if path.endswith(("/fsa", "/derp", "/derc", "/actderc", "/edev")))
        assert ("/edev/2", {}) in gets
        derc_pages = [query["s"] for path, query in gets if path == "/edev/1/derp/1/derc"]
        assert derc_pages == ["0", "1", "2", "3", "4", "5"]
        # limits, at local time, with provenance
        now = rig.clock.now
        book = rig.book
        assert book.link_is_up(SOURCE)
        assert book.limit_kw("site-a", "import", now) == 7.0
        assert book.limit_kw("site-a", "export", now) == 2.0
        assert book.limit_kw("evse-a1", "import", now) == 6.0
        assert book.limit_kw("evse-a1", "export", now) == 10.0
        assert book.limit_kw("site-b", "import", now) == 120.0
        assert book.limit_kw("site-b", "export", now) == 0.0
        why = [reason for reason in book.why("site-a", now) if reason.binding]
        assert "DERControl 30000000000000000000000100000000 (/edev/1/derp/1/derc/1)" in \
            why[0].constraint.source_ref
        assert "primacy 2" in why[0].constraint.source_ref
        # the event window moved to the local clock: in force up to its end, not after
        server_tm = int(server.docs["/tm"].findtext(f"{{{SEP2}}}currentTime"))
        assert rig.client.offset == timedelta(seconds=server_tm - SERVER_NOW - LOCAL_AHEAD_S)
        end_local = datetime.fromtimestamp(DERC1_END, UTC) - rig.client.offset
        assert book.limit_kw("site-a", "import", end_local - timedelta(seconds=1)) == 7.0
        assert book.limit_kw("site-a", "import", end_local) is None
        # DefaultDERControl limits (15 kW) fill the gaps, expiring default_ttl_s after the poll
        site_a = [c for c in book.published() if c.node_id == "site-a" and c.import_max_kw]
        assert {(c.import_max_kw, c.expires_at) for c in site_a} >= {
            (7.0, None), (15.0, now + timedelta(seconds=900))}
        assert rig.client.next_poll_s == 60.0  # the DERProgramList's pollRate
    run.__name__ = f"test_discovery_registration_and_limits_{version.replace('-', '_')}"
    return run


test_discovery_registration_and_limits_v2 = _discovery("envoy-v2.2.0")
test_discovery_registration_and_limits_v1 = _discovery("envoy-v1.5.0")


@with_rig()
async def test_responses_posted_once_and_only_after_a_2xx(rig: Rig) -> None:
    rsp = "/edev/1/rsps/site_control/rsp"
    rig.server.faults[rsp] = "500"
    first = await rig.client.poll_once()
    assert not first.ok and not rig.book.link_is_up(SOURCE)
    refused = len(rig.server.posts(rsp))
    assert refused == 1  # the link failed on the first one; nothing recorded as sent
    assert rig.client.sites["a"].response_log.sent == frozenset()
    del rig.server.faults[rsp]
    second = await rig.client.poll_once()
    assert second.ok, second.reason
    evaluation = rig.client.sites["a"].last_evaluation
    assert evaluation is not None
    owed = {(item.subject, int(item.status)) for item in evaluation.responses}
    posted = [parse(seen.body, DERControlReply) for seen in rig.server.posts(rsp)[refused:]]
    sent = [(reply.subject, int(reply.status)) for reply in posted]
    assert sorted(sent) == sorted(owed)
    assert len(sent) == len(set(sent))
    assert (DERC1, 1) in owed and (DERC1, 2) in owed  # received, started
    assert ("30000000000000000000000400000000", 6) in owed  # cancelled
    assert {reply.endDeviceLFDI for reply in posted} == {SITE_A_LFDI.upper()}  # server's
    assert {reply.createdDateTime for reply in posted} == {SERVER_NOW}
    before = len(rig.server.requests)
    third = await rig.client.poll_once()
    assert third.ok and third.responses_sent == 0
    assert [seen for seen in rig.server.requests[before:] if seen.method == "POST"] == []


@with_rig(max_list_items=1)
async def test_every_site_is_found_in_the_end_device_list_beyond_max_list_items(
        rig: Rig) -> None:
    outcome = await rig.client.poll_once()
    assert outcome.ok, outcome.reason
    assert rig.server.posts("/edev") == []  # site B (the 3rd EndDevice) is not registered
    assert [seen.query["s"] for seen in rig.server.requests
            if seen.method == "GET" and seen.path == "/edev"] == ["0", "1", "2"]
    assert rig.client.sites["b"].edev_href == "/edev/2"
    derc = [seen for seen in rig.server.requests if seen.path == "/edev/1/derp/1/derc"]
    assert len(derc) == 1  # other lists keep the cap


@with_rig()
async def test_cancel_add_and_poll_rate_changes_are_followed(rig: Rig) -> None:
    assert (await rig.client.poll_once()).ok
    derc, actderc = "/edev/1/derp/1/derc", "/edev/1/derp/1/actderc"
    for path in (derc, actderc):
        rig.server.set_status(path, DERC1, 2, SERVER_NOW + 10)
    rig.server.docs["/edev/1/fsa/1/derp"].set("pollRate", "120")
    rig.clock.now += timedelta(seconds=30)
    outcome = await rig.client.poll_once()
    assert outcome.ok
    now = rig.clock.now
    assert rig.book.limit_kw("site-a", "import", now) == 15.0  # back to the default
    assert rig.client.next_poll_s == 60.0  # FSA 2's DERProgramList still says 60
    rig.server.docs["/edev/1/fsa/2/derp"].set("pollRate", "120")
    rig.server.docs["/edev/2/fsa/1/derp"].set("pollRate", "120")
    rig.server.docs["/edev/2/fsa/2/derp"].set("pollRate", "120")
    cancelled = [parse(seen.body, DERControlReply)
                 for seen in rig.server.posts("/edev/1/rsps/site_control/rsp")]
    assert [(r.subject, int(r.status)) for r in cancelled].count((DERC1, 6)) == 1
    rig.server.add_control(derc, DERC1, "3000000000000000000000000000ABCD",
                           start=SERVER_NOW - 60, duration_s=600, import_value=250,
                           created=SERVER_NOW + 20)
    assert (await rig.client.poll_once()).ok
    assert rig.book.limit_kw("site-a", "import", now) == 2.5  # 250 x 10^1 W
    assert rig.client.next_poll_s == 120.0


# -- link loss and misbehaving servers ---------------------------------------------------------

@with_rig()
async def test_server_down_link_lost_and_the_book_falls_back(rig: Rig) -> None:
    assert (await rig.client.poll_once()).ok
    await rig.server.stop()
    rig.clock.now += timedelta(seconds=60)
    outcome = await rig.client.poll_once()
    assert not outcome.ok and "ClientConnectorError" in outcome.reason
    book = rig.book
    assert not book.link_is_up(SOURCE)
    # the active DERControl's limit is kept until the event ends ...
    assert book.limit_kw("site-a", "import", rig.clock.now) == 7.0
    # ... after that the default's limit has expired too: the configured safe default holds
    after = local(DERC1_END) + timedelta(seconds=60)
    assert book.limit_kw("site-a", "import", after) == 3.0
    binding = [reason for reason in book.why("site-a", after) if reason.binding]
    assert binding[0].constraint.source == SAFE_DEFAULT_SOURCE
    # the default-derived limit lasted default_ttl_s (900 s) past the last good poll
    default_expiry = local(SERVER_NOW) + timedelta(seconds=900)
    evse = [c for c in book.published() if c.node_id == "evse-a1" and c.expires_at]
    assert evse and {c.expires_at for c in evse} == {default_expiry}


@with_rig()
async def test_retry_after_is_honoured(rig: Rig) -> None:
    rig.server.faults["/dcap"] = "429"
    outcome = await rig.client.poll_once()
    assert not outcome.ok and "HTTP 429, retry after 120 s" in outcome.reason
    assert rig.client.next_poll_s >= 120
    seen = len(rig.server.requests)
    early = await rig.client.poll_once()
    assert early.skipped and len(rig.server.requests) == seen  # nothing sent while waiting
    del rig.server.faults["/dcap"]
    rig.clock.now += timedelta(seconds=121)
    assert (await rig.client.poll_once()).ok
    assert rig.book.link_is_up(SOURCE)


@with_rig(max_concurrency=2)
async def test_a_back_off_in_one_sites_walk_stops_the_concurrent_poll(rig: Rig) -> None:
    rig.server.faults["/edev/2/fsa"] = "503"  # site B's walk; site A's runs alongside
    outcome = await rig.client.poll_once()
    assert not outcome.ok and "HTTP 503, retry after 120 s" in outcome.reason
    assert rig.client.backoff_until == rig.clock.now + timedelta(seconds=120)
    assert not rig.book.link_is_up(SOURCE)
    assert rig.server.posts("/edev/1/rsps/site_control/rsp") == []  # nothing applied
    assert len(rig.server.peers) <= 2  # at most max_concurrency connections
    del rig.server.faults["/edev/2/fsa"]
    rig.clock.now += timedelta(seconds=121)
    again = await rig.client.poll_once()
    assert again.ok and set(again.published) == {"a", "b"}
    assert rig.book.limit_kw("site-a", "import", rig.clock.now) == 7.0
    assert rig.book.limit_kw("site-b", "import", rig.clock.now) == 120.0


@pytest.mark.parametrize(("path", "fault", "words"), [
    ("/edev", "html", "HTML page titled 'Gateway login'"),
    ("/tm", "error", "reasonCode 0"),
    ("/edev/1/derp/1/dderc", "error200", "server returned <Error> reasonCode 0"),
    ("/edev/1/fsa", "oversize", "more than the cap of 262144 bytes"),
    ("/dcap", "redirect", "cross-host redirect"),
])
def test_bad_answers_are_logged_and_the_service_goes_on(path: str, fault: str, words: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    @with_rig()
    async def run(rig: Rig) -> None:
        rig.server.faults[path] = fault
        with caplog.at_level(logging.ERROR, logger="adapters.ieee2030_5.client"):
            outcome = await rig.client.poll_once()
        assert not outcome.ok and words in outcome.reason, outcome.reason
        assert not rig.book.link_is_up(SOURCE)
        assert any(words in record.getMessage() for record in caplog.records)
        assert not any(seen.path.startswith("elsewhere") for seen in rig.server.requests)
        del rig.server.faults[path]
        again = await rig.client.poll_once()
        assert again.ok, again.reason
        assert rig.book.limit_kw("site-a", "import", rig.clock.now) == 7.0
    run()


@with_rig()
async def test_run_polls_until_stopped(rig: Rig) -> None:
    stop = asyncio.Event()
    rig.book.subscribe(lambda change: stop.set() if change.kind.value == "link_up" else None)
    await asyncio.wait_for(rig.client.run(stop), timeout=20)
    assert rig.book.limit_kw("site-a", "import", rig.clock.now) == 7.0


# -- metering -------------------------------------------------------------------------------

_samples: dict[str, SiteTelemetry | None] = {}


@with_rig(telemetry=lambda site: _samples.get(site), post_rate_s=300)
async def test_mirror_usage_point_and_readings(rig: Rig) -> None:
    assert (await rig.client.poll_once()).ok
    _samples.clear()
    _samples["a"] = SiteTelemetry(power_w=2350.4, import_wh=1234567, export_wh=7654321,
                                  at=local(SERVER_NOW))
    assert await rig.client.post_readings_once() == {"a": True}
    created = rig.server.posts("/mup")
    assert len(created) == 1
    mup = parse(created[0].body, MirrorUsagePointRequest)
    assert mup.deviceLFDI == SITE_A_LFDI.upper() and mup.postRate == 300
    readings = mup.mirrorMeterReadings or []
    assert [(r.readingType.uom, r.readingType.flowDirection, r.readingType.kind)
            for r in readings if r.readingType] == [(38, 1, 37), (72, 1, 12), (72, 19, 12)]
    assert [r.reading.value for r in readings if r.reading] == [2350, 1234567, 7654321]
    assert {r.reading.timePeriod.start for r in readings
            if r.reading and r.reading.timePeriod} == {SERVER_NOW}
    assert rig.client.sites["a"].mup_href == "/mup/2"
    _samples["a"] = SiteTelemetry(power_w=-2010, import_wh=1234567, export_wh=7654489,
                                  at=local(SERVER_NOW + 300))
    assert await rig.client.post_readings_once() == {"a": True}
    assert len(rig.server.posts("/mup")) == 1  # created once
    later = rig.server.posts("/mup/2")
    assert len(later) == 1
    batch = parse(later[0].body, MirrorMeterReadingListRequest)
    items = batch.mirrorMeterReadings or []
    assert [item.mRID for item in items] == [r.mRID for r in readings]
    assert [item.reading.value for item in items if item.reading] == [-2010, 1234567, 7654489]
    assert {item.reading.timePeriod.start for item in items
            if item.reading and item.reading.timePeriod} == {SERVER_NOW + 300}
