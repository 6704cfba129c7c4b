"""A loopback IEEE 2030.5 / CSIP-AUS utility server: recorded envoy bodies, served with state.

The DSO-side peer of :class:`adapters.ieee2030_5.client.Sep2Client` for the tests and for
``gridflex demo`` (as :mod:`adapters.openadr.vtn` is for OpenADR).  It serves every recorded
GET body of an envoy walk (``recorded/envoy-v2.2.0`` or ``recorded/envoy-v1.5.0``; the README
in each folder describes the recorded state) at its recorded path and Content-Type, and:

- pages lists itself (``s``/``l``; no ``l`` means one item, as envoy does);
- registers EndDevices on ``POST /edev``: the two recorded sites get their recorded href; any
  other LFDI gets a new EndDevice ``/edev/{n}`` with a copy of site A's recorded resource tree
  (FunctionSetAssignments, the two DERPrograms, empty DERControl lists, empty
  DefaultDERControls), so the client finds its programs by following hrefs as usual;
- accepts ConnectionPoint PUTs, Responses and MirrorUsagePoints, records every request
  (:attr:`LoopbackServer.requests`) and misbehaves on demand (:attr:`LoopbackServer.faults`).

Time: without a ``clock`` the server's time is the recorded ``/tm`` (the recorded controls are
placed around it: the tests rely on that).  With ``clock`` (e.g. a demo's accelerated
simulated clock, or :func:`wall_clock`) ``/tm`` answers that clock, from which the client
derives its offset, and the controls published with the DSO API below turn active and
leave the ActiveDERControlList on that clock.

The DSO API (what a demo DSO does); a site is named by its EndDevice href, its LFDI or a site
name given to :meth:`LoopbackServer.client_settings`:

- :meth:`~LoopbackServer.set_import_limit`, :meth:`~LoopbackServer.set_export_limit`
  (:meth:`~LoopbackServer.publish_control` for both at once, and for ``opModFixedW``)
  publish a DERControl with ``opModImpLimW`` / ``opModExpLimW`` in the site's DERProgram
  with the lowest primacy (the one that wins), found through its FunctionSetAssignments;
- :meth:`~LoopbackServer.set_default_import_limit`,
  :meth:`~LoopbackServer.set_default_export_limit` set that program's DefaultDERControl;
- :meth:`~LoopbackServer.cancel_control` cancels a control (EventStatus 2);
- :meth:`~LoopbackServer.client_settings` gives the table for
  :meth:`adapters.ieee2030_5.config.ClientConfig.from_mapping` for a set of sites;
  :meth:`~LoopbackServer.list_sites` lists them as if registered earlier (benchmarks of
  many sites: enrolment and publishing are indexed, so N sites cost O(N)).

For benchmarks, ``latency_s`` delays every answer (a wide-area round trip), ``busy_s`` sums
the time spent in the request handler and ``peers`` collects the client connections.

A site that the client has not registered yet can be given limits: it is enrolled (its
EndDevice resources exist, unlisted) and the client's ``POST /edev`` then gets that href.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlBase,
    DERControlResponse,
)
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.event import EventStatus
from envoy_schema.server.schema.sep2.types import DateTimeIntervalType
from lxml import etree  # type: ignore[import-untyped,unused-ignore]  # no stubs: values are Any

from adapters.ieee2030_5.identity import sfdi_from_lfdi
from adapters.ieee2030_5.xml import CSIPAUS_NAMESPACES, CSIPAUS_NS, parse, serialise
from aggregator.model import require_utc

RECORDED = Path(__file__).parent / "recorded"
"""The recorded envoy walks, one folder per server version (each with a README)."""

VERSIONS = ("envoy-v2.2.0", "envoy-v1.5.0")
"""The recorded server versions (folder names under :data:`RECORDED`)."""

SEP2 = "urn:ieee:std:2030.5:ns"
TEMPLATE_EDEV = "/edev/1"
"""The recorded EndDevice whose resource tree a newly registered site gets (site A)."""

INT16_MAX = 32_767
MAX_DURATION_S = 2**32 - 1  # UInt32
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_EDEV = re.compile(r"/edev/([0-9]+)")
_SINGLE_EVENTS = frozenset({"DERControl", "DERControlResponse", "Response"})
_WITH_MRID = frozenset({"FunctionSetAssignments", "DERProgram", "DefaultDERControl",
                        "ResponseSet"})


def wall_clock() -> datetime:
    """The local wall clock (UTC): pass as ``clock`` for a server on real time."""
    return datetime.now(UTC)


def site_lfdi(name: str) -> str:
    """The LFDI :meth:`LoopbackServer.client_settings` gives a site: stable, lower-case hex."""
    return hashlib.sha256(f"gridflex-loopback-site\x1f{name}".encode()).hexdigest()[:40]


def active_power(watts: float) -> ActivePower:
    """``watts`` as an ActivePower: the smallest multiplier >= 0 whose value fits Int16.

    The value is rounded to the nearest 10^multiplier W (at most 0.02 % off above 32767 W).
    """
    if isinstance(watts, bool) or not isinstance(watts, int | float) \
            or not math.isfinite(watts) or watts < 0:
        raise ValueError(f"a limit must be a finite number of W >= 0, got {watts!r}")
    multiplier = 0
    while math.floor(watts / 10**multiplier + 0.5) > INT16_MAX:
        multiplier += 1
    if multiplier > 9:
        raise ValueError(f"{watts} W cannot be sent as an ActivePower (multiplier > 9)")
    return ActivePower(multiplier=multiplier, value=math.floor(watts / 10**multiplier + 0.5))


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class ProgramRef:
    """A DERProgram assigned to an EndDevice (through its FunctionSetAssignments)."""

    href: str
    mrid: str
    primacy: int
    description: str
    control_list: str  # DERControlListLink href
    active_list: str | None  # ActiveDERControlListLink href
    default: str | None  # DefaultDERControlLink href


@dataclass
class _Published:
    """A DERControl published through the DSO API (its status follows the clock)."""

    mrid: str
    href: str
    control_list: str
    active_list: str | None
    element: Any  # the item in the DERControlList (also served alone at ``href``)
    start_s: int
    end_s: int


@dataclass
class LoopbackServer:
    """Recorded envoy state, a clock, a DSO API and faults; :meth:`start` gives the base URL.

    ``registered`` are the recorded EndDevices listed in the EndDeviceList (a registration
    adds to it); ``clock`` is the server's clock (``None``: the recorded ``/tm``).
    """

    version: str = "envoy-v2.2.0"
    registered: tuple[str, ...] = ("/edev/0", "/edev/1", "/edev/2")
    clock: Callable[[], datetime] | None = None
    docs: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    ciphers: list[tuple[str, str, int]] = field(default_factory=list)
    retry_after_s: int = 120
    url: str | None = None
    latency_s: float = 0.0  # added before every answer (a wide-area round trip, benchmarks)
    busy_s: float = 0.0  # time spent in the request handler (benchmarks: is the server slow?)
    peers: set[Any] = field(default_factory=set)  # client (host, port)s: one per connection
    _edevs: dict[str, Any] = field(default_factory=dict)
    _edev_order: list[str] = field(default_factory=list)
    _locations: dict[str, str] = field(default_factory=dict)
    _enrolled: dict[str, str] = field(default_factory=dict)
    _site_lfdis: dict[str, str] = field(default_factory=dict)
    _published: dict[str, _Published] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _rsp_count: int = 0
    _mrid_count: int = 0
    _revision: int = 0  # bumped by every change to the published controls
    _refreshed: tuple[int, int] | None = None  # (server second, revision) of the last refresh
    _list_links: dict[str, list[Any]] | None = None  # list href -> links to it
    _mup_by_mrid: dict[str, str] = field(default_factory=dict)
    _touched: set[str] = field(default_factory=set)  # active lists to refresh
    _by_active_list: dict[str, list[_Published]] = field(default_factory=dict)
    _mrids: set[str] | None = None  # every served DERControl mRID (see _known_mrids)
    _reply_tos: dict[str, str] = field(default_factory=dict)  # EndDevice -> replyTo
    _template: list[str] | None = None  # the paths of site A's tree (copied on enrolment)
    _last_edev: int = 0  # the highest /edev/{n} served

    def __post_init__(self) -> None:
        folder = RECORDED / self.version
        if self.version not in VERSIONS or not folder.is_dir():
            raise ValueError(f"version {self.version!r}: recorded versions are {VERSIONS}")
        self.content_type = ""
        for sidecar in sorted(folder.glob("*.json")):
            meta = json.loads(sidecar.read_text())
            request, response = meta["request"], meta["response"]
            if request["method"] == "POST" and request["path"] == "/edev" \
                    and response["location"]:
                lfdi = request["body"].split("<lFDI>")[1].split("</lFDI>")[0]
                self._locations[lfdi.lower()] = response["location"]
            if request["method"] != "GET" or response["status"] != 200:
                continue
            self.content_type = response["content_type"]
            root = etree.fromstring((folder / response["body_file"]).read_bytes())
            known = self.docs.get(request["path"])
            if known is None or len(root) >= len(known):
                self.docs[request["path"]] = root  # the fullest recording of the path
        edev_list = self.docs.pop("/edev")
        for item in edev_list:
            self._edevs[item.get("href")] = item
            self._edev_order.append(item.get("href"))
        self.edev_list_attrib = dict(edev_list.attrib)
        self.error_body = (folder / "78_err_404_unknown_path.xml").read_bytes()
        self.dcap_path = next(path for path, root in self.docs.items()
                              if etree.QName(root).localname == "DeviceCapability")
        namespaces = set(self.docs[self.dcap_path].nsmap.values())
        self.csipaus_namespace = next((uri for uri in CSIPAUS_NAMESPACES if uri in namespaces),
                                      CSIPAUS_NS)
        self.recorded_time_s = int(self.docs["/tm"].findtext(f"{{{SEP2}}}currentTime"))

    # -- time ---------------------------------------------------------------------------
    def now(self) -> datetime:
        """The server's time: ``clock()``, or the recorded ``/tm`` without a clock."""
        if self.clock is None:
            return datetime.fromtimestamp(self.recorded_time_s, UTC)
        return require_utc(self.clock(), "clock")

    def _now_s(self) -> int:
        return math.floor(self.now().timestamp())

    # -- the DSO API --------------------------------------------------------------------
    def client_settings(self, sites: Mapping[str, str], *,
                        evses: Mapping[str, Sequence[str]] | None = None,
                        **overrides: Any) -> dict[str, Any]:
        """A table for ``ClientConfig.from_mapping``: this server and ``sites`` (name -> node id).

        Each site gets the LFDI :func:`site_lfdi` (not in the recording, so the client
        registers it), an NMI and the EVSE device category; ``evses`` maps site names to
        their EVSE node ids.  ``overrides`` are further top-level keys (``poll_rate_s``,
        ``min_poll_s``, ``default_ttl_s``, ...).  The site names can then name the sites in
        the DSO API.  Call after :meth:`start`.
        """
        if self.url is None:
            raise RuntimeError("start() the server first: the settings need its URL")
        table: dict[str, Any] = {
            "server_url": self.url, "dcap_path": self.dcap_path,
            "allow_plain_http": self.url.startswith("http:"), "sites": {}}
        for name, node_id in sites.items():
            lfdi = site_lfdi(name)
            self._site_lfdis[name] = lfdi
            table["sites"][name] = {
                "node_id": node_id, "evses": list((evses or {}).get(name, ())), "lfdi": lfdi,
                "nmi": f"LOOP{lfdi[:8].upper()}", "device_category": "20000"}  # bit 17: EVSE
        table.update(overrides)
        return table

    def end_device(self, site: str) -> str:
        """The EndDevice href of ``site``: an href, an LFDI (any case) or a settings name.

        An LFDI the server does not know yet is enrolled: its EndDevice exists (not yet
        listed) and the client's registration gets this href.
        """
        if site.startswith("/"):
            root = self.docs.get(site)
            if root is None or etree.QName(root).localname != "EndDevice":
                raise KeyError(f"{site!r} is not an EndDevice of this server")
            return site
        lfdi = self._site_lfdis.get(site, site).lower()
        if not _HEX40.fullmatch(lfdi):
            raise KeyError(f"{site!r} is neither an EndDevice href, an LFDI nor a site name "
                           f"given to client_settings()")
        return self._locations.get(lfdi) or self._enrolled.get(lfdi) or self._enrol(lfdi)

    def list_sites(self, sites: Iterable[str]) -> list[str]:
        """Enrol ``sites`` and list them in the EndDeviceList, as if registered earlier (a
        restarted client finds them there); their EndDevice hrefs, in order."""
        hrefs = [self.end_device(site) for site in sites]
        listed = set(self.registered)
        self.registered = (*self.registered, *(href for href in dict.fromkeys(hrefs)
                                               if href not in listed))
        return hrefs

    def programs(self, site: str) -> list[ProgramRef]:
        """The DERPrograms of ``site``'s FunctionSetAssignments, lowest primacy first."""
        edev = self.docs[self.end_device(site)]
        link = edev.find(f"{{{SEP2}}}FunctionSetAssignmentsListLink")
        found: dict[str, ProgramRef] = {}
        fsa_list = self.docs.get(link.get("href")) if link is not None else None
        for fsa in fsa_list if fsa_list is not None else ():
            derp_link = fsa.find(f"{{{SEP2}}}DERProgramListLink")
            derp_list = self.docs.get(derp_link.get("href")) if derp_link is not None else None
            for derp in derp_list if derp_list is not None else ():
                href = derp.get("href")
                control_list = _link(derp, "DERControlListLink")
                if href in found or control_list is None or control_list not in self.docs:
                    continue
                found[href] = ProgramRef(
                    href=href, mrid=derp.findtext(f"{{{SEP2}}}mRID") or "",
                    primacy=int(derp.findtext(f"{{{SEP2}}}primacy")),
                    description=derp.findtext(f"{{{SEP2}}}description") or "",
                    control_list=control_list,
                    active_list=_link(derp, "ActiveDERControlListLink"),
                    default=_link(derp, "DefaultDERControlLink"))
        return sorted(found.values(), key=lambda ref: (ref.primacy, ref.href))

    def set_import_limit(self, site: str, start: datetime, duration_s: int,
                         import_limit_w: float, mrid: str | None = None, *,
                         program: str | None = None) -> str:
        """Publish a DERControl capping the site's import (opModImpLimW); returns its mRID."""
        return self.publish_control(site, start, duration_s, import_limit_w=import_limit_w,
                                    mrid=mrid, program=program)

    def set_export_limit(self, site: str, start: datetime, duration_s: int,
                         export_limit_w: float, mrid: str | None = None, *,
                         program: str | None = None) -> str:
        """Publish a DERControl capping the site's export (opModExpLimW); returns its mRID."""
        return self.publish_control(site, start, duration_s, export_limit_w=export_limit_w,
                                    mrid=mrid, program=program)

    def publish_control(self, site: str, start: datetime, duration_s: int, *,
                        import_limit_w: float | None = None,
                        export_limit_w: float | None = None,
                        fixed_w_percent: float | None = None, mrid: str | None = None,
                        program: str | None = None) -> str:
        """Publish a DERControl over ``[start, start + duration_s)`` (server time); its mRID.

        It goes into ``program`` (a DERProgram href, mRID or description) or else the site's
        program with the lowest primacy, is listed in start order, answers Responses at the
        site's ResponseList (``responseRequired`` 03), and is active (EventStatus 1, in the
        ActiveDERControlList) while the server's clock is in its window.  Overlaps are left
        to the client (2030.5: the newer event supersedes).  ``start`` is cut to whole
        seconds; ``mrid`` (32 hex digits) defaults to a new one.  ``fixed_w_percent`` sends
        ``opModFixedW`` (a signed % of the DER's rating, + discharge, - charge; whole
        hundredths of a percent on the wire).
        """
        if import_limit_w is None and export_limit_w is None and fixed_w_percent is None:
            raise ValueError("give import_limit_w, export_limit_w, fixed_w_percent or some")
        if fixed_w_percent is not None and (
                isinstance(fixed_w_percent, bool) or not isinstance(fixed_w_percent, int | float)
                or not -100.0 <= fixed_w_percent <= 100.0):
            raise ValueError(f"fixed_w_percent must be a number in -100..100, got "
                             f"{fixed_w_percent!r}")
        if isinstance(duration_s, bool) or not isinstance(duration_s, int) \
                or not 0 < duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be a whole number of seconds in 1..2^32-1, "
                             f"got {duration_s!r}")
        base = DERControlBase(
            opModImpLimW=None if import_limit_w is None else active_power(import_limit_w),
            opModExpLimW=None if export_limit_w is None else active_power(export_limit_w),
            opModFixedW=None if fixed_w_percent is None else round(fixed_w_percent * 100))
        edev = self.end_device(site)
        ref = self._program(edev, program)
        start_s = math.floor(require_utc(start, "start").timestamp())
        end_s = start_s + duration_s
        mrid = self._new_mrid(edev) if mrid is None else mrid.upper()
        if not _HEX32.fullmatch(mrid):
            raise ValueError(f"mrid must be 32 hex digits, got {mrid!r}")
        if self._mrid_taken(mrid):
            raise ValueError(f"a DERControl with mRID {mrid} exists already")
        listing = self.docs[ref.control_list]
        href = self._new_control_href(ref.control_list, listing)
        now_s = self._now_s()
        model = DERControlResponse(
            href=href, replyTo=self._reply_to(edev), responseRequired="03", mRID=mrid,
            description=datetime.fromtimestamp(start_s, UTC).isoformat(), version=1,
            creationTime=now_s,
            EventStatus_=EventStatus(currentStatus=1 if start_s <= now_s < end_s else 0,
                                     dateTime=now_s, potentiallySuperseded=False),
            interval=DateTimeIntervalType(duration=duration_s, start=start_s),
            DERControlBase_=base)
        element = etree.fromstring(serialise(model, csipaus_namespace=self.csipaus_namespace))
        _insert_by_start(listing, element)
        self.docs[href] = element
        published = _Published(mrid, href, ref.control_list, ref.active_list, element, start_s,
                               end_s)
        self._published[mrid] = published
        if ref.active_list is not None:
            self._by_active_list.setdefault(ref.active_list, []).append(published)
        self._known_mrids().add(mrid)
        self._touch(ref.active_list)
        self._count_links(ref.control_list, len(listing))
        self._refresh()
        return mrid

    def cancel_control(self, mrid: str) -> None:
        """Cancel a DERControl (EventStatus 2, now): the client stops it at once."""
        found = self._controls(mrid.upper())
        if not found:
            raise KeyError(f"no DERControl with mRID {mrid}")
        now_s = str(self._now_s())
        for element in found:
            element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}currentStatus").text = "2"
            element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}dateTime").text = now_s
        published = self._published.get(mrid.upper())
        self._touch(published.active_list if published is not None else None)
        self._refresh()

    def set_default_import_limit(self, site: str, import_limit_w: float | None, *,
                                 program: str | None = None) -> str:
        """Set (None: remove) opModImpLimW of the program's DefaultDERControl; its href.

        The default applies wherever no DERControl sets the quantity (and, for a while,
        when the server is unreachable).  ``program`` as for :meth:`publish_control`.
        """
        return self._set_default(site, "opModImpLimW", import_limit_w, program)

    def set_default_export_limit(self, site: str, export_limit_w: float | None, *,
                                 program: str | None = None) -> str:
        """Set (None: remove) opModExpLimW of the program's DefaultDERControl; its href."""
        return self._set_default(site, "opModExpLimW", export_limit_w, program)

    # -- recorded-state helpers (tests) -----------------------------------------------------
    def control(self, path: str, mrid: str) -> Any:
        """The DERControl element with ``mrid`` in the list at ``path``."""
        for item in self.docs[path]:
            if item.findtext(f"{{{SEP2}}}mRID") == mrid:
                return item
        raise KeyError(mrid)

    def set_status(self, path: str, mrid: str, status: int, at: int) -> None:
        element = self.control(path, mrid)
        element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}currentStatus").text = str(status)
        element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}dateTime").text = str(at)

    def add_control(self, path: str, template_mrid: str, mrid: str, start: int,
                    duration_s: int, import_value: int, created: int) -> None:
        """A copy of a recorded DERControl with a new mRID, window and import limit."""
        element = copy.deepcopy(self.control(path, template_mrid))
        element.set("href", f"{path}/{mrid[-4:]}")
        element.find(f"{{{SEP2}}}mRID").text = mrid
        element.find(f"{{{SEP2}}}creationTime").text = str(created)
        element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}currentStatus").text = "1"
        element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}dateTime").text = str(created)
        element.find(f"{{{SEP2}}}interval/{{{SEP2}}}start").text = str(start)
        element.find(f"{{{SEP2}}}interval/{{{SEP2}}}duration").text = str(duration_s)
        base = element.find(f"{{{SEP2}}}DERControlBase")
        for limit in base:
            if etree.QName(limit).localname == "opModImpLimW":
                limit.find(f"{{{SEP2}}}value").text = str(import_value)
        self.docs[path].append(element)
        self._known_mrids().add(mrid)

    def posts(self, path: str) -> list[Seen]:
        """The POSTs and PUTs received at ``path``."""
        return [seen for seen in self.requests if seen.method in ("POST", "PUT")
                and seen.path == path]

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, ssl_context: ssl.SSLContext | None = None, *,
                    host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); the base URL (also :attr:`url`)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            await web.SockSite(self._runner, sock, ssl_context=ssl_context).start()
        except BaseException:
            sock.close()
            await self.stop()
            raise
        bound = sock.getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- state --------------------------------------------------------------------------
    def _program(self, edev: str, program: str | None) -> ProgramRef:
        refs = self.programs(edev)
        if program is not None:
            refs = [ref for ref in refs if program in (ref.href, ref.mrid, ref.description)]
        if not refs:
            raise KeyError(f"EndDevice {edev} has no DERProgram"
                           + (f" {program!r}" if program is not None else ""))
        return refs[0]

    def _set_default(self, site: str, quantity: str, watts: float | None,
                     program: str | None) -> str:
        power = None if watts is None else active_power(watts)
        ref = self._program(self.end_device(site), program)
        if ref.default is None or ref.default not in self.docs:
            raise KeyError(f"DERProgram {ref.href} has no DefaultDERControl")
        model = parse(etree.tostring(self.docs[ref.default]), DefaultDERControl)
        setattr(model.DERControlBase_, quantity, power)
        model.version = (model.version or 0) + 1
        self.docs[ref.default] = self._default_element(model)
        return ref.default

    def _default_element(self, model: DefaultDERControl) -> Any:
        """The served DefaultDERControl; an empty DERControlBase stays (it is mandatory)."""
        element = etree.fromstring(serialise(model, csipaus_namespace=self.csipaus_namespace))
        if element.find(f"{{{SEP2}}}DERControlBase") is None:  # skip_empty dropped it
            before = [child for child in element
                      if etree.QName(child).localname in ("mRID", "description", "version")]
            element.insert(element.index(before[-1]) + 1 if before else 0,
                           etree.Element(f"{{{SEP2}}}DERControlBase"))
        return element

    def _controls(self, mrid: str) -> list[Any]:
        """Every served copy of the DERControl ``mrid`` (lists, active lists, by href)."""
        found: list[Any] = []
        for root in self.docs.values():
            local = etree.QName(root).localname
            items = [root] if local == "DERControl" else list(root) \
                if local == "DERControlList" else []
            found.extend(item for item in items
                         if item.findtext(f"{{{SEP2}}}mRID") == mrid and item not in found)
        return found

    def _refresh(self) -> None:
        """Published controls on the server's clock: scheduled -> active, active lists."""
        now_s = self._now_s()
        if self._refreshed == (now_s, self._revision):
            return
        # on a new second every control may change state; else only the touched lists
        every = self._refreshed is None or self._refreshed[0] != now_s
        self._refreshed = (now_s, self._revision)
        touched, self._touched = self._touched, set()
        items = self._published.values() if every else [
            item for path in touched for item in self._by_active_list.get(path, ())]
        active: dict[str, list[_Published]] = {}
        for item in items:
            status = item.element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}currentStatus")
            if status.text == "0" and item.start_s <= now_s:
                status.text = "1"
                item.element.find(f"{{{SEP2}}}EventStatus/{{{SEP2}}}dateTime").text = \
                    str(item.start_s)
            if item.active_list is None or item.active_list not in self.docs:
                continue
            bucket = active.setdefault(item.active_list, [])
            if status.text == "1" and item.start_s <= now_s < item.end_s:
                bucket.append(item)
        for path, running in active.items():
            listing = self.docs[path]
            running.sort(key=lambda item: item.start_s)  # stable: list order
            mine = [child for child in listing
                    if child.findtext(f"{{{SEP2}}}mRID") in self._published]
            if [_state(child) for child in mine] == [_state(item.element) for item in running]:
                continue  # unchanged since the last request
            for child in mine:
                listing.remove(child)
            for item in running:
                _insert_by_start(listing, copy.deepcopy(item.element))
            self._count_links(path, len(listing))

    def _count_links(self, list_href: str, count: int) -> None:
        """Set ``all`` on every link to ``list_href`` (DERProgram's list links)."""
        if self._list_links is None:
            self._list_links = {}
            for root in self.docs.values():
                self._index_links(root)
        for element in self._list_links.get(list_href, ()):
            element.set("all", str(count))

    def _index_links(self, root: Any) -> None:
        """Add the list links in ``root`` to the index of :meth:`_count_links`."""
        assert self._list_links is not None
        for element in root.iter():
            if isinstance(element.tag, str) and element.tag.endswith("ListLink") \
                    and element.get("href"):
                self._list_links.setdefault(element.get("href"), []).append(element)

    def _new_mrid(self, edev: str) -> str:
        while True:
            self._mrid_count += 1
            mrid = hashlib.sha256(f"gridflex-loopback-control\x1f{edev}\x1f"
                                  f"{self._mrid_count}".encode()).hexdigest()[:32].upper()
            if not self._mrid_taken(mrid):
                return mrid

    def _mrid_taken(self, mrid: str) -> bool:
        return mrid in self._published or mrid in self._known_mrids()

    def _known_mrids(self) -> set[str]:
        """The mRIDs of every served DERControl (indexed once; kept by the DSO API)."""
        if self._mrids is None:
            self._mrids = {item.findtext(f"{{{SEP2}}}mRID") for root in self.docs.values()
                           for item in ([root] if etree.QName(root).localname == "DERControl"
                                        else root if etree.QName(root).localname
                                        == "DERControlList" else ())}
        return self._mrids

    def _new_control_href(self, control_list: str, listing: Any) -> str:
        """The next free ``{control_list}/{n}``: after the listed ones, not served yet."""
        prefix = control_list + "/"
        numbers = [int(href[len(prefix):]) for item in listing
                   if (href := item.get("href") or "").startswith(prefix)
                   and href[len(prefix):].isdigit()]
        number = max(numbers, default=0) + 1
        while f"{prefix}{number}" in self.docs:
            number += 1
        return f"{prefix}{number}"

    def _touch(self, active_list: str | None) -> None:
        """A published control changed: its active list is refreshed on the next request."""
        self._revision += 1
        if active_list is not None:
            self._touched.add(active_list)

    def _reply_to(self, edev: str) -> str:
        """Where the site's Responses go: as its recorded controls say, else as site A's."""
        known = self._reply_tos.get(edev)
        if known is None:
            known = self._reply_tos[edev] = self._find_reply_to(edev)
        return known

    def _find_reply_to(self, edev: str) -> str:
        enrolled = self._template is not None and edev in self._enrolled.values()
        paths = [edev + path[len(TEMPLATE_EDEV):] for path in self._template or ()] \
            if enrolled else [path for path in self.docs if path.startswith(edev + "/")]
        for path in paths:  # an enrolled site's tree is known: no scan of every site's
            root = self.docs.get(path)
            if root is not None and etree.QName(root).localname == "DERControlList":
                for item in root:
                    if item.get("replyTo"):
                        return str(item.get("replyTo"))
        template = self._reply_to(TEMPLATE_EDEV) if edev != TEMPLATE_EDEV \
            else f"{TEMPLATE_EDEV}/rsps/site_control/rsp"
        return edev + template[len(TEMPLATE_EDEV):]

    def _enrol(self, lfdi: str) -> str:
        """A new EndDevice for ``lfdi`` with a copy of site A's resources, unlisted."""
        if self._template is None:  # indexed once: a scan per site would be quadratic
            self._last_edev = max((int(match.group(1)) for path in (*self.docs, *self._edevs)
                                   if (match := _EDEV.fullmatch(path))), default=0)
            self._template = [path for path, root in self.docs.items()
                              if (path == TEMPLATE_EDEV or path.startswith(TEMPLATE_EDEV + "/"))
                              and etree.QName(root).localname not in _SINGLE_EVENTS]
        self._last_edev += 1
        href = f"/edev/{self._last_edev}"
        for path in self._template:  # not the recorded site's own events and Responses
            root = self.docs[path]
            local = etree.QName(root).localname
            clone = _rebased(root, TEMPLATE_EDEV, href)
            if local in ("DERControlList", "ResponseList"):
                for child in list(clone):
                    clone.remove(child)
                clone.set("all", "0")
                clone.set("results", "0")
            elif local == "DefaultDERControl":  # "no default configured", as envoy says it
                clone = self._default_element(DefaultDERControl(
                    href=clone.get("href"), mRID=clone.findtext(f"{{{SEP2}}}mRID"), version=0,
                    DERControlBase_=DERControlBase()))
            elif local == "ConnectionPoint":
                for element in clone.iter():
                    if etree.QName(element).localname == "connectionPointId":
                        element.text = ""
            for element in clone.iter():
                if isinstance(element.tag, str) \
                        and element.tag.endswith(("DERControlListLink", "}ResponseListLink")):
                    element.set("all", "0")
            self.docs[href + path[len(TEMPLATE_EDEV):]] = clone
            if self._list_links is not None:
                self._index_links(clone)
        edev = self.docs[href]
        _set_text(edev, "lFDI", lfdi.upper())  # envoy answers the LFDI in upper case
        _set_text(edev, "sFDI", str(sfdi_from_lfdi(lfdi)))
        _set_text(edev, "deviceCategory", "0")
        _set_text(edev, "changedTime", str(self._now_s()))
        self._edevs[href] = copy.deepcopy(edev)
        self._edev_order.append(href)
        self._enrolled[lfdi] = href
        return href

    def _register(self, body: bytes) -> web.Response:
        """``POST /edev``: the recorded href of a recorded site, else the (new) enrolled one."""
        try:
            posted = etree.fromstring(body)
        except etree.XMLSyntaxError:
            return self._error(400)
        lfdi = (posted.findtext(f"{{{SEP2}}}lFDI") or "").strip().lower()
        sfdi = (posted.findtext(f"{{{SEP2}}}sFDI") or "").strip()
        if not _HEX40.fullmatch(lfdi) or not sfdi.isdigit():
            return self._error(400)
        href = self._locations.get(lfdi)
        if href is None:
            href = self._enrolled.get(lfdi) or self._enrol(lfdi)
            for edev in (self.docs[href], self._edevs[href]):
                _set_text(edev, "sFDI", sfdi)
                _set_text(edev, "deviceCategory",
                          posted.findtext(f"{{{SEP2}}}deviceCategory") or "0")
                _set_text(edev, "changedTime", str(self._now_s()))
        if href not in self.registered:
            self.registered = (*self.registered, href)
        return web.Response(status=201, headers={"Location": href})

    def _connection_point(self, path: str, body: bytes) -> web.Response:
        try:
            posted = etree.fromstring(body)
        except etree.XMLSyntaxError:
            return self._error(400)
        nmi = next((element.text for element in posted.iter() if isinstance(element.tag, str)
                    and etree.QName(element).localname == "connectionPointId"), None)
        stored = self.docs.get(path)
        if nmi is not None and stored is not None:
            for element in stored.iter():
                if etree.QName(element).localname == "connectionPointId":
                    element.text = nmi
        return web.Response(status=201, headers={"Location": path})

    # -- serving ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        started = time.perf_counter()
        try:
            return await self._serve(request)
        finally:
            self.busy_s += time.perf_counter() - started

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.path, dict(request.query), body))
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        ssl_object = request.transport.get_extra_info("ssl_object") \
            if request.transport else None
        if ssl_object is not None:
            self.ciphers.append(ssl_object.cipher())
        fault = self.faults.get(request.path)
        if fault is not None:
            return await self._fault(fault, request)
        if request.method == "GET":
            return self._get(request)
        if request.method == "POST" and request.path == "/edev":
            return self._register(body)
        if request.method == "PUT" and request.path.endswith("/cp"):
            return self._connection_point(request.path, body)
        if request.method == "POST" and request.path.endswith("/rsp"):
            self._rsp_count += 1
            return web.Response(status=201,
                                headers={"Location": f"{request.path}/{self._rsp_count}"})
        if request.method == "POST" and request.path == "/mup":
            mrid = etree.fromstring(body).findtext(f"{{{SEP2}}}mRID")
            if mrid in self._mup_by_mrid:
                return web.Response(status=204, headers={"Location": self._mup_by_mrid[mrid]})
            self._mup_by_mrid[mrid] = f"/mup/{len(self._mup_by_mrid) + 2}"
            return web.Response(status=201, headers={"Location": self._mup_by_mrid[mrid]})
        if request.method == "POST" and request.path.startswith("/mup/"):
            return web.Response(status=201)
        return web.Response(status=405, body=self.error_body, content_type="application/sep+xml")

    def _error(self, status: int) -> web.Response:
        return web.Response(status=status, body=self.error_body,
                            headers={"Content-Type": self.content_type})

    def _get(self, request: web.Request) -> web.Response:
        self._refresh()
        if request.path == "/edev":  # built per page: only the page's items are copied
            root = etree.Element(f"{{{SEP2}}}EndDeviceList", nsmap={None: SEP2})
            for key, value in self.edev_list_attrib.items():
                root.set(key, value)
            listed = set(self.registered)
            return self._reply(_paged(root, [self._edevs[href] for href in self._edev_order
                                             if href in listed], request.query))
        else:
            found = self.docs.get(request.path)
            if found is None:
                return self._error(404)
            root = found
            if root.getparent() is not None:  # a published control, served by its href
                root = copy.deepcopy(root)
            if request.path == "/tm" and self.clock is not None:
                root = copy.deepcopy(root)
                root.find(f"{{{SEP2}}}currentTime").text = str(self._now_s())
        if etree.QName(root).localname.endswith("List"):
            root = _paged(etree.Element(root.tag, attrib=dict(root.attrib), nsmap=root.nsmap),
                          list(root), request.query)
        return self._reply(root)

    def _reply(self, root: Any) -> web.Response:
        return web.Response(body=etree.tostring(root),
                            headers={"Content-Type": self.content_type})

    async def _fault(self, fault: str, request: web.Request) -> web.StreamResponse:
        if fault in ("429", "503"):
            return web.Response(status=int(fault),
                                headers={"Retry-After": str(self.retry_after_s)})
        if fault == "500":
            return web.Response(status=500, body=b"<html><title>Oops</title></html>",
                                content_type="text/html")
        if fault == "html":
            return web.Response(status=200, content_type="text/html",
                                body=b"<!DOCTYPE html><html><head><title>Gateway login"
                                     b"</title></head><body>proxy</body></html>")
        if fault == "error":
            return self._error(400)
        if fault == "error200":
            return self._error(200)
        if fault == "redirect":
            return web.Response(status=302,
                                headers={"Location": f"http://elsewhere.invalid{request.path}"})
        if fault == "oversize":  # an endless chunked body: only a capped reader survives
            response = web.StreamResponse(headers={"Content-Type": self.content_type})
            await response.prepare(request)
            chunk = b"<!-- padding -->" * 4096
            with contextlib.suppress(ConnectionError, RuntimeError):
                for _ in range(100_000):
                    await response.write(chunk)
            return response
        raise AssertionError(f"unknown fault {fault!r}")


def _paged(shell: Any, items: Sequence[Any], query: Any) -> Any:
    """``shell`` (an empty list element) filled with copies of the page ``s``/``l`` asks for
    (no ``l``: one item, as envoy does), with ``all`` and ``results`` set."""
    start = int(query.get("s", "0"))
    limit = int(query.get("l", "1"))
    for item in items[start:start + limit]:
        shell.append(copy.deepcopy(item))
    shell.set("all", str(len(items)))
    shell.set("results", str(len(shell)))
    return shell


def _rebased(root: Any, old: str, new: str) -> Any:
    """A copy of ``root`` with hrefs under ``old`` moved under ``new`` and fresh mRIDs."""
    clone = copy.deepcopy(root)
    for element in clone.iter():
        if not isinstance(element.tag, str):
            continue
        for name in ("href", "replyTo"):
            value = element.get(name)
            if value is not None and (value == old or value.startswith(old + "/")):
                element.set(name, new + value[len(old):])
        mrid = element.find(f"{{{SEP2}}}mRID")
        if etree.QName(element).localname in _WITH_MRID and mrid is not None \
                and element.get("href"):
            mrid.text = hashlib.sha256(element.get("href").encode()).hexdigest()[:32].upper()
    return clone


def _link(element: Any, name: str) -> str | None:
    """The href of ``element``'s child link ``name`` (None when it has none)."""
    child = element.find(f"{{{SEP2}}}{name}")
    return None if child is None or child.get("href") is None else str(child.get("href"))


def _state(control: Any) -> tuple[str, str, str]:
    """A DERControl's mRID and EventStatus (what changes of a published control)."""
    return (control.findtext(f"{{{SEP2}}}mRID") or "",
            control.findtext(f"{{{SEP2}}}EventStatus/{{{SEP2}}}currentStatus") or "",
            control.findtext(f"{{{SEP2}}}EventStatus/{{{SEP2}}}dateTime") or "")


def _set_text(element: Any, local: str, text: str) -> None:
    child = element.find(f"{{{SEP2}}}{local}")
    if child is not None:
        child.text = text


def _insert_by_start(listing: Any, element: Any) -> None:
    """Insert a DERControl into a list ordered by start time (as envoy orders it)."""
    def start(item: Any) -> int:
        return int(item.findtext(f"{{{SEP2}}}interval/{{{SEP2}}}start") or 0)

    at = start(element)
    for index, item in enumerate(listing):
        if start(item) > at:
            listing.insert(index, element)
            return
    listing.append(element)
