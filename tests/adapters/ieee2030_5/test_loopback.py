"""The loopback 2030.5 server as a demo DSO: the real ``Sep2Client`` on a simulated clock.

Server and client share a simulated clock that starts tomorrow at 16:00 UTC (far from the
wall clock and from the recorded ``/tm``) and is moved by hand in whole seconds, so every
window below is exact on that clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from envoy_schema.server.schema.sep2.der import DefaultDERControl, DERControlResponse
from envoy_schema.server.schema.sep2.end_device import EndDeviceRequest
from envoy_schema.server.schema.sep2.response import DERControlResponse as DERControlReply
from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from adapters.ieee2030_5.client import Sep2Client
from adapters.ieee2030_5.config import ClientConfig
from adapters.ieee2030_5.controls import SOURCE, ResponseStatus
from adapters.ieee2030_5.identity import sfdi_from_lfdi, sfdi_is_valid
from adapters.ieee2030_5.loopback import (
    RECORDED,
    SEP2,
    VERSIONS,
    LoopbackServer,
    active_power,
    site_lfdi,
)
from adapters.ieee2030_5.xml import parse
from aggregator.constraints import ConstraintBook

SIM_START = (datetime.now(UTC) + timedelta(days=1)).replace(hour=16, minute=0, second=0,
                                                             microsecond=0)
SITES = {"depot": "site-depot", "fleet": "site-fleet"}
RECORDED_SITE_A_LFDI = "d1bae45aeabc08255827c6c778d71883eb3f59de"
SECOND = timedelta(seconds=1)
R = ResponseStatus


class SimClock:
    """The simulated clock, moved by hand."""

    def __init__(self, now: datetime = SIM_START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclasses.dataclass
class Rig:
    server: LoopbackServer
    client: Sep2Client
    book: ConstraintBook
    clock: SimClock

    async def poll(self) -> None:
        outcome = await self.client.poll_once()
        assert outcome.ok, outcome.reason

    def responses(self, site: str) -> list[tuple[str, int]]:
        """(subject, status) of every Response the client posted for ``site``."""
        return responses(self.server, site)


def responses(server: LoopbackServer, site: str, since: int = 0) -> list[tuple[str, int]]:
    """(subject, status) of the Responses posted for ``site`` (from the ``since``-th on)."""
    edev = server.end_device(site)
    replies = [parse(seen.body, DERControlReply)
               for seen in server.posts(f"{edev}/rsps/site_control/rsp")[since:]]
    assert all(reply.status is not None for reply in replies)
    return [(reply.subject, int(reply.status or 0)) for reply in replies]


@contextlib.asynccontextmanager
async def rig(version: str = "envoy-v2.2.0", client_behind_s: int = 0,
              **overrides: Any) -> AsyncIterator[Rig]:
    """A loopback DSO on the simulated clock and a client for SITES built from its settings;
    the client's clock runs ``client_behind_s`` behind the server's."""
    clock = SimClock()
    server = LoopbackServer(version=version, clock=clock)
    await server.start()
    settings = server.client_settings(SITES, evses={"depot": ["evse-d1"]}, min_poll_s=1,
                                      **overrides)
    config = ClientConfig.from_mapping(settings)

    def client_clock() -> datetime:
        return clock.now - timedelta(seconds=client_behind_s)

    book = ConstraintBook(started_at=client_clock())
    client = Sep2Client(config, book, clock=client_clock)
    try:
        yield Rig(server, client, book, clock)
    finally:
        await client.close()
        await server.stop()


async def listed(server: LoopbackServer, path: str | None) -> list[str]:
    """The mRIDs a GET of the DERControl list at ``path`` answers now."""
    assert server.url is not None and path is not None
    async with aiohttp.ClientSession() as session, \
            session.get(f"{server.url}{path}", params={"s": "0", "l": "255"}) as reply:
        assert reply.status == 200
        root = etree.fromstring(await reply.read())
    return [item.findtext(f"{{{SEP2}}}mRID") for item in root]


async def listed_edevs(server: LoopbackServer) -> list[str]:
    """The EndDevice hrefs a GET of the EndDeviceList answers, paged by 2 (s/l)."""
    assert server.url is not None
    found: list[str] = []
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{server.url}/edev",
                                   params={"s": str(len(found)), "l": "2"}) as reply:
                root = etree.fromstring(await reply.read())
            found.extend(item.get("href") for item in root)
            if len(root) == 0 or len(found) >= int(root.get("all")):
                return found


# -- settings and registration -------------------------------------------------------------

def test_client_settings_give_a_valid_config_for_the_sites() -> None:
    server = LoopbackServer(clock=SimClock())
    with pytest.raises(RuntimeError, match="start"):
        server.client_settings(SITES)

    async def main() -> None:
        url = await server.start()
        try:
            config = ClientConfig.from_mapping(server.client_settings(
                SITES, evses={"depot": ["evse-d1"]}, poll_rate_s=2))
        finally:
            await server.stop()
        assert config.server_url == url and config.allow_plain_http
        assert config.dcap_path == "/dcap" and config.poll_rate_s == 2.0
        assert set(config.sites) == set(SITES)
        for name, node_id in SITES.items():
            site = config.sites[name]
            assert site.nodes.site == node_id
            assert site.lfdi == site_lfdi(name) != RECORDED_SITE_A_LFDI
            assert sfdi_is_valid(site.sfdi) and site.sfdi == sfdi_from_lfdi(site.lfdi)
            assert site.nmi is not None and site.device_category == "20000"  # EVSE
        assert config.sites["depot"].nodes.evses == ("evse-d1",)
        assert site_lfdi("depot") == site_lfdi("depot") != site_lfdi("fleet")
    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_new_sites_register_and_get_the_recorded_programs(version: str) -> None:
    async def main() -> None:
        async with rig(version) as r:
            await r.poll()
            posted = [parse(seen.body, EndDeviceRequest) for seen in r.server.posts("/edev")]
            assert sorted(edev.lFDI.lower() for edev in posted if edev.lFDI) == \
                sorted(site_lfdi(name) for name in SITES)
            hrefs = {name: r.server.end_device(name) for name in SITES}
            assert sorted(hrefs.values()) == ["/edev/3", "/edev/4"]  # after the recorded ones
            assert {r.client.sites[name].edev_href for name in SITES} == set(hrefs.values())
            for name, edev in hrefs.items():
                assert edev in r.server.registered
                gets = {seen.path for seen in r.server.requests if seen.method == "GET"}
                assert {edev, f"{edev}/fsa", f"{edev}/fsa/1/derp", f"{edev}/fsa/2/derp",
                        f"{edev}/derp/1/derc", f"{edev}/derp/2/dderc"} <= gets
                programs = r.server.programs(name)
                assert [(p.href, p.primacy) for p in programs] == [
                    (f"{edev}/derp/2", 1), (f"{edev}/derp/1", 2)]
                assert programs[0].description == "DNSP Emergency Backstop"
                cp = r.server.posts(f"{edev}/cp")
                nmi = r.client.config.sites[name].nmi
                assert len(cp) == 1 and nmi is not None and nmi.encode() in cp[0].body
                stored = etree.tostring(r.server.docs[f"{edev}/cp"])
                assert nmi.encode() in stored
            # a new site starts without controls or defaults: nothing in the book for it
            assert r.client.offset == timedelta(0)  # /tm follows the simulated clock
            assert r.book.link_is_up(SOURCE)
            assert r.book.limit_kw("site-depot", "import", r.clock.now) is None
            assert [c for c in r.book.published() if c.node_id in SITES.values()] == []
            # a second poll does not register again
            await r.poll()
            assert len(r.server.posts("/edev")) == 2
            # sites listed by the DSO API are found in the EndDeviceList, not registered
            more = {f"extra-{i}": f"site-extra-{i}" for i in range(3)}
            r.server.client_settings(more)
            hrefs = r.server.list_sites(more)
            assert hrefs == ["/edev/5", "/edev/6", "/edev/7"]
            assert r.server.list_sites(more) == hrefs  # listed once
            assert r.server.registered[-3:] == tuple(hrefs)
            listed = await listed_edevs(r.server)
            assert listed[-3:] == hrefs and len(listed) == len(set(listed))
    asyncio.run(main())


# -- limits on the simulated clock -------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_import_limit_reaches_the_book_for_its_window_and_ends_with_it(version: str) -> None:
    async def main() -> None:
        async with rig(version) as r:
            await r.poll()
            start = r.clock.now + timedelta(minutes=10)
            end = start + timedelta(seconds=1800)
            mrid = r.server.set_import_limit("depot", start, 1800, 22_000)
            program = r.server.programs("depot")[0]
            assert await listed(r.server, program.control_list) == [mrid]
            assert await listed(r.server, program.active_list) == []  # still scheduled
            await r.poll()
            book = r.book
            assert book.limit_kw("site-depot", "import", start - SECOND) is None
            assert book.limit_kw("site-depot", "import", start) == 22.0
            assert book.limit_kw("site-depot", "import", end - SECOND) == 22.0
            assert book.limit_kw("site-depot", "import", end) is None
            assert book.limit_kw("site-depot", "export", start) is None
            assert book.limit_kw("site-fleet", "import", start) is None  # other site
            (reason,) = [item for item in book.why("site-depot", start) if item.binding]
            ref = reason.constraint.source_ref
            assert reason.constraint.source == SOURCE
            assert f"DERControl {mrid} ({program.control_list}/1)" in ref
            assert f"DERProgram {program.href} 'DNSP Emergency Backstop' (primacy 1)" in ref
            assert "opModImpLimW 22000 W -> site site-depot import cap" in ref
            assert (reason.constraint.start, reason.constraint.end) == (start, end)
            assert reason.constraint.expires_at is None
            assert r.responses("depot") == [(mrid, ResponseStatus.RECEIVED)]
            # the window opens on the simulated clock: active on the server, started
            r.clock.now = start + timedelta(seconds=5)
            assert await listed(r.server, program.active_list) == [mrid]
            await r.poll()
            assert book.limit_kw("site-depot", "import", r.clock.now) == 22.0
            assert (mrid, ResponseStatus.STARTED) in r.responses("depot")
            # ... and closes on it: gone from the server's active list and from the book
            r.clock.now = end + SECOND
            await r.poll()
            assert await listed(r.server, program.active_list) == []
            assert await listed(r.server, program.control_list) == [mrid]  # kept, as envoy
            assert book.limit_kw("site-depot", "import", r.clock.now) is None
            assert [c for c in book.published() if c.node_id == "site-depot"] == []
            assert r.responses("depot") == [(mrid, ResponseStatus.RECEIVED),
                                            (mrid, ResponseStatus.STARTED),
                                            (mrid, ResponseStatus.COMPLETED)]
    asyncio.run(main())


def test_export_limit_with_a_multiplier_until_its_end() -> None:
    async def main() -> None:
        async with rig() as r:
            await r.poll()
            start = r.clock.now
            mrid = r.server.set_export_limit("fleet", start, 900, 50_000)
            program = r.server.programs("fleet")[0]
            element = r.server.control(program.control_list, mrid)
            sent = parse(etree.tostring(element), DERControlResponse).DERControlBase_
            assert sent.opModExpLimW is not None and sent.opModImpLimW is None
            assert (sent.opModExpLimW.value, sent.opModExpLimW.multiplier) == (5000, 1)
            await r.poll()
            assert r.book.limit_kw("site-fleet", "export", start) == 50.0
            assert r.book.limit_kw("site-fleet", "import", start) is None
            (reason,) = [item for item in r.book.why("site-fleet", start) if item.binding]
            assert f"DERControl {mrid}" in reason.constraint.source_ref
            assert "opModExpLimW 50000 W -> site site-fleet export cap" in \
                reason.constraint.source_ref
            assert r.book.limit_kw("site-fleet", "export", start + timedelta(seconds=900)) \
                is None
            r.clock.advance(899)
            await r.poll()
            assert r.book.limit_kw("site-fleet", "export", r.clock.now) == 50.0
            r.clock.advance(1)
            await r.poll()
            assert r.book.limit_kw("site-fleet", "export", r.clock.now) is None
    asyncio.run(main())


def test_active_power_uses_the_smallest_multiplier_that_fits_int16() -> None:
    cases = {0: (0, 0), 7000: (7000, 0), 32_767: (32_767, 0), 32_768: (3277, 1),
             50_000: (5000, 1), 1_234_567: (12_346, 2), 1500.4: (1500, 0)}
    for watts, expected in cases.items():
        power = active_power(watts)
        assert (power.value, power.multiplier) == expected, watts
        assert abs(power.value * 10**power.multiplier - watts) <= 10**power.multiplier / 2
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError):
            active_power(bad)


def test_limit_set_before_registration_reaches_the_site_once_registered() -> None:
    async def main() -> None:
        async with rig() as r:
            href = r.server.end_device("depot")  # enrolled, not yet listed
            assert href not in r.server.registered
            mrid = r.server.set_import_limit("depot", r.clock.now, 3600, 7_400)
            await r.poll()
            posted = [parse(seen.body, EndDeviceRequest).lFDI
                      for seen in r.server.posts("/edev")]
            assert posted.count(site_lfdi("depot")) == 1  # registered by the client
            assert r.client.sites["depot"].edev_href == href
            assert r.book.limit_kw("site-depot", "import", r.clock.now) == 7.4
            assert (mrid, ResponseStatus.STARTED) in r.responses("depot")
    asyncio.run(main())


def test_default_import_limit_fills_the_gaps_and_can_be_removed() -> None:
    async def main() -> None:
        async with rig() as r:
            await r.poll()
            now = r.clock.now
            dderc = r.server.set_default_import_limit("depot", 11_000)
            assert dderc == r.server.programs("depot")[0].default
            window = now + timedelta(minutes=5)  # within default_ttl_s (900 s) of the poll
            mrid = r.server.set_import_limit("depot", window, 300, 5_000)
            await r.poll()
            book = r.book
            assert book.limit_kw("site-depot", "import", now) == 11.0
            assert book.limit_kw("site-depot", "import", window) == 5.0
            assert book.limit_kw("site-depot", "import", window + timedelta(minutes=5)) == 11.0
            (reason,) = [item for item in book.why("site-depot", now) if item.binding]
            assert f"DefaultDERControl {dderc}" in reason.constraint.source_ref
            assert reason.constraint.expires_at is not None  # defaults outlive a lost link
            (control,) = [item for item in book.why("site-depot", window) if item.binding]
            assert mrid in control.constraint.source_ref
            default = parse(etree.tostring(r.server.docs[dderc]), DefaultDERControl)
            assert default.version == 1 and default.DERControlBase_.opModImpLimW is not None
            r.server.set_default_import_limit("depot", None)
            await r.poll()
            assert book.limit_kw("site-depot", "import", now) is None
            assert book.limit_kw("site-depot", "import", window) == 5.0
    asyncio.run(main())


def test_cancelled_limit_stops_at_once() -> None:
    async def main() -> None:
        async with rig() as r:
            await r.poll()
            mrid = r.server.set_import_limit("depot", r.clock.now, 7200, 3_000)
            await r.poll()
            assert r.book.limit_kw("site-depot", "import", r.clock.now) == 3.0
            r.clock.advance(60)
            r.server.cancel_control(mrid)
            assert await listed(r.server, r.server.programs("depot")[0].active_list) == []
            await r.poll()
            assert r.book.limit_kw("site-depot", "import", r.clock.now) is None
            assert (mrid, ResponseStatus.CANCELLED) in r.responses("depot")
            with pytest.raises(KeyError):
                r.server.cancel_control("F" * 32)
    asyncio.run(main())


def test_client_clock_behind_the_server_moves_windows_by_the_offset() -> None:
    async def main() -> None:
        async with rig(client_behind_s=100) as r:
            start = r.clock.now + timedelta(minutes=5)
            r.server.set_import_limit("depot", start, 600, 9_000)
            await r.poll()
            assert r.client.offset == timedelta(seconds=100)
            local_start = start - timedelta(seconds=100)
            assert r.book.limit_kw("site-depot", "import", local_start - SECOND) is None
            assert r.book.limit_kw("site-depot", "import", local_start) == 9.0
            assert r.book.limit_kw("site-depot", "import",
                                   local_start + timedelta(seconds=600)) is None
    asyncio.run(main())


# -- the recorded default and bad requests --------------------------------------------------

def test_without_a_clock_the_recorded_time_and_sites_are_served() -> None:
    server = LoopbackServer()
    recorded = int(server.docs["/tm"].findtext(f"{{{SEP2}}}currentTime"))
    assert server.now() == datetime.fromtimestamp(recorded, UTC)
    refs = server.programs(RECORDED_SITE_A_LFDI.upper())  # any case
    assert [(ref.href, ref.primacy) for ref in refs] == [("/edev/1/derp/2", 1),
                                                          ("/edev/1/derp/1", 2)]
    chosen = server.set_export_limit("/edev/1", server.now(), 60, 1_000,
                                     program="DNSP Dynamic Operating Envelopes")
    assert server.control("/edev/1/derp/1/derc", chosen) is not None

    async def main() -> None:
        url = await server.start()
        config = ClientConfig.from_mapping({
            "server_url": url, "allow_plain_http": True, "min_poll_s": 1,
            "sites": {"a": {"node_id": "site-a", "lfdi": RECORDED_SITE_A_LFDI}}})
        now = server.now()
        book = ConstraintBook(started_at=now)
        client = Sep2Client(config, book, clock=server.now)
        try:
            assert (await client.poll_once()).ok
            assert book.limit_kw("site-a", "import", now) == 7.0  # recorded DERControl 1
            mrid = server.set_import_limit("/edev/1", now, 600, 4_000)
            assert server.control("/edev/1/derp/2/derc", mrid) is not None
            assert (await client.poll_once()).ok
            assert book.limit_kw("site-a", "import", now) == 4.0  # primacy 1 wins
            assert book.limit_kw("site-a", "import", now + timedelta(seconds=600)) == 7.0
            assert server.posts("/edev") == []  # site A was registered in the recording
        finally:
            await client.close()
            await server.stop()
    asyncio.run(main())


def test_bad_requests_are_refused() -> None:
    server = LoopbackServer(clock=SimClock())
    start = SIM_START
    with pytest.raises(KeyError):
        server.set_import_limit("no-such-site", start, 60, 1000)
    with pytest.raises(KeyError):
        server.set_import_limit("/edev/99", start, 60, 1000)
    with pytest.raises(KeyError):
        server.set_import_limit("/edev/1", start, 60, 1000, program="no such program")
    with pytest.raises(ValueError, match="duration_s"):
        server.set_import_limit("/edev/1", start, 0, 1000)
    with pytest.raises(ValueError, match="finite"):
        server.set_export_limit("/edev/1", start, 60, -5)
    with pytest.raises(ValueError, match="mrid"):
        server.set_import_limit("/edev/1", start, 60, 1000, mrid="xyz")
    with pytest.raises(ValueError, match="exists already"):  # a recorded control's mRID
        server.set_import_limit("/edev/1", start, 60, 1000,
                                mrid="30000000000000000000000100000000")
    with pytest.raises(ValueError, match="import_limit_w"):
        server.publish_control("/edev/1", start, 60)
    for bad_percent in (150.0, -100.5, True):
        with pytest.raises(ValueError, match="fixed_w_percent"):
            server.publish_control("/edev/1", start, 60, fixed_w_percent=bad_percent)
    with pytest.raises(ValueError):  # naive datetimes are refused
        server.set_import_limit("/edev/1", start.replace(tzinfo=None), 60, 1000)
    with pytest.raises(ValueError, match="recorded versions"):
        LoopbackServer(version="envoy-v9")
    assert all((RECORDED / version / "README.md").is_file() for version in VERSIONS)


# -- opModFixedW: a site setpoint, through the book into the plan ------------------------------

def test_fixed_w_control_becomes_a_setpoint_the_plan_follows_within_caps() -> None:
    """A DERControl with opModFixedW -50 % (charge) on a site rated 20 kW becomes a 10 kW
    import setpoint in the book; the planner draws 10 kW in its window, and 8 kW where an
    import limit of 8 kW comes with it (the cap is hard, the setpoint soft)."""
    from aggregator.model import Evse, GridNode, GridTree, NodeKind, Session
    from aggregator.planning import build_problem, to_schedule
    from aggregator.scenario import Scenario
    from optimizer import solve

    start = SIM_START
    window = timedelta(minutes=30)
    tree = GridTree((GridNode("site-depot", NodeKind.SITE),),
                    tuple(Evse(f"D-0{i}", "site-depot", max_import_kw=11.0) for i in (1, 2)))
    scenario = Scenario(name="fixed-w", start=start, interval=timedelta(minutes=15),
                        n_intervals=12, tree=tree, sessions=tuple(
                            Session(f"s-{i}", f"D-0{i}", start, start + timedelta(hours=3),
                                    battery_capacity_kwh=60.0, soc_initial=0.3,
                                    max_charge_kw=11.0, energy_requested_kwh=12.0)
                            for i in (1, 2)))

    def site_kw(case: Scenario) -> Any:
        problem, index = build_problem(case)
        solution = solve(problem)
        assert solution.ok
        return to_schedule(solution, problem, index).node_load_kw(tree, "site-depot")

    async def main() -> None:
        clock = SimClock()
        server = LoopbackServer(clock=clock)
        await server.start()
        settings = server.client_settings({"depot": "site-depot"},
                                          evses={"depot": ["D-01", "D-02"]}, min_poll_s=1)
        settings["sites"]["depot"].update(fixed_w_charge_basis_kw=20.0,
                                          fixed_w_discharge_basis_kw=20.0)
        book = ConstraintBook(started_at=clock.now)
        client = Sep2Client(ClientConfig.from_mapping(settings), book, clock=clock)
        try:
            setpoint = server.publish_control("depot", start + window, 1800,
                                              fixed_w_percent=-50.0)
            capped = server.publish_control("depot", start + 2 * window, 1800,
                                            fixed_w_percent=-50.0, import_limit_w=8_000)
            sent = parse(etree.tostring(server.control(server.programs("depot")[0]
                                                       .control_list, setpoint)),
                         DERControlResponse).DERControlBase_
            assert sent.opModFixedW == -5000  # hundredths of a percent on the wire
            assert (await client.poll_once()).ok
            in_book = sorted(((c.start, c.setpoint_kw, c.import_max_kw, c.source_ref)
                              for c in book.published() if c.node_id == "site-depot"),
                             key=lambda item: (item[0], item[1] is None))
            assert [(at - start, kw, cap) for at, kw, cap, _ in in_book] == [
                (window, 10.0, None), (2 * window, 10.0, None), (2 * window, None, 8.0)]
            assert f"DERControl {setpoint}" in in_book[0][3]
            assert "opModFixedW -50 % -> site site-depot setpoint 10 kW" in in_book[0][3]
            assert f"DERControl {capped}" in in_book[1][3]
            planned = book.context_for(scenario)
            load = site_kw(planned)
            first = load[(load.index >= start + window) & (load.index < start + 2 * window)]
            second = load[(load.index >= start + 2 * window)
                          & (load.index < start + 3 * window)]
            assert list(first) == pytest.approx([10.0, 10.0], abs=1e-6)
            assert list(second) == pytest.approx([8.0, 8.0], abs=1e-6)
            free = site_kw(scenario)  # without the DSO's control the plan differs there
            assert any(abs(kw - 10.0) > 1e-3 for kw in free[first.index])
        finally:
            await client.close()
            await server.stop()
    asyncio.run(main())


# -- every kind of Response, over the wire ----------------------------------------------------

def test_every_response_kind_reaches_the_server_once() -> None:
    """Superseded (by a newer overlapping event, and by the server), not applicable,
    invalid and received late: each POSTed once, with the started / completed ones."""
    async def main() -> None:
        async with rig() as r:
            await r.poll()
            now = r.clock.now
            older = r.server.set_import_limit("depot", now - timedelta(minutes=5), 3600, 9_000)
            r.clock.advance(1)  # the newer one is created later
            newer = r.server.set_import_limit("depot", now + timedelta(minutes=10), 600, 6_000)
            by_server = r.server.set_import_limit("depot", now, 600, 7_000)
            r.server.set_status(r.server.programs("depot")[0].control_list, by_server, 4,
                                int(now.timestamp()))
            fixed_only = r.server.publish_control("depot", now, 600, fixed_w_percent=-40.0)
            invalid = r.server.set_import_limit("depot", now, 600, 5_000)
            element = r.server.control(r.server.programs("depot")[0].control_list, invalid)
            for item in element.iter():
                if etree.QName(item).localname == "multiplier":
                    item.text = "99"  # 7 kW x 10^99: outside -9..9
            late = r.server.set_import_limit("depot", now - timedelta(hours=2), 600, 4_000)
            await r.poll()
            assert sorted(r.responses("depot")) == sorted([
                (older, R.RECEIVED), (older, R.STARTED), (newer, R.RECEIVED),
                (by_server, R.RECEIVED), (by_server, R.SUPERSEDED),
                (fixed_only, R.NOT_APPLICABLE), (invalid, R.INVALID),
                (late, R.RECEIVED_LATE)])
            assert r.book.limit_kw("site-depot", "import", r.clock.now) == 9.0
            r.clock.now = now + timedelta(minutes=11)  # the newer one has taken over
            await r.poll()
            assert r.book.limit_kw("site-depot", "import", r.clock.now) == 6.0
            r.clock.now = now + timedelta(minutes=21)  # ... and ended; the older stays over
            await r.poll()
            assert r.book.limit_kw("site-depot", "import", r.clock.now) is None
            final = r.responses("depot")
            assert final[8:] == [(older, R.SUPERSEDED), (newer, R.STARTED),
                                 (newer, R.COMPLETED)]
            assert len(final) == len(set(final))  # none twice
            assert not {status for _, status in final} & {4, 5}  # gridflex never opts out
    asyncio.run(main())
