"""A loopback IEEE 2030.5 server for tests: the recorded envoy bodies, served with state.

It serves every recorded GET body of a fixture folder at its recorded path and Content-Type,
pages lists itself (``s``/``l``; no ``l`` means one item, as envoy does), registers
EndDevices on POST (answering with the recorded Location), accepts ConnectionPoint PUTs,
Responses and MirrorUsagePoints, records every request, and can misbehave on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree  # type: ignore[import-untyped,unused-ignore]

FIXTURES = Path(__file__).parent / "fixtures"
SEP2 = "urn:ieee:std:2030.5:ns"


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class LoopbackServer:
    """Recorded envoy state plus faults; start() gives the base URL."""

    version: str = "envoy-v2.2.0"
    registered: tuple[str, ...] = ("/edev/0", "/edev/1", "/edev/2")
    docs: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    ciphers: list[tuple[str, str, int]] = field(default_factory=list)
    retry_after_s: int = 120
    _edevs: dict[str, Any] = field(default_factory=dict)
    _edev_order: list[str] = field(default_factory=list)
    _locations: dict[str, str] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _rsp_count: int = 0
    _mup_by_mrid: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        folder = FIXTURES / self.version
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

    # -- state changes ------------------------------------------------------------------
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

    def posts(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.method in ("POST", "PUT")
                and seen.path == path]

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        port = server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- serving ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.path, dict(request.query), body))
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
            lfdi = etree.fromstring(body).findtext(f"{{{SEP2}}}lFDI")
            href = self._locations[lfdi.lower()]
            self.registered = (*self.registered, href)
            return web.Response(status=201, headers={"Location": href})
        if request.method == "PUT" and request.path.endswith("/cp"):
            return web.Response(status=201, headers={"Location": request.path})
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

    def _get(self, request: web.Request) -> web.Response:
        if request.path == "/edev":
            root = etree.Element(f"{{{SEP2}}}EndDeviceList", nsmap={None: SEP2})
            for key, value in self.edev_list_attrib.items():
                root.set(key, value)
            for href in self._edev_order:
                if href in self.registered:
                    root.append(copy.deepcopy(self._edevs[href]))
        else:
            found = self.docs.get(request.path)
            if found is None:
                return web.Response(status=404, body=self.error_body,
                                    headers={"Content-Type": self.content_type})
            root = found
        if etree.QName(root).localname.endswith("List"):
            root = self._page(root, request.query)
        return web.Response(body=etree.tostring(root),
                            headers={"Content-Type": self.content_type})

    @staticmethod
    def _page(root: Any, query: Any) -> Any:
        start = int(query.get("s", "0"))
        limit = int(query.get("l", "1"))
        items = list(root)
        page = copy.deepcopy(root)
        for child in list(page):
            page.remove(child)
        for item in items[start:start + limit]:
            page.append(copy.deepcopy(item))
        page.set("all", str(len(items)))
        page.set("results", str(len(page)))
        return page

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
            return web.Response(status=400, body=self.error_body,
                                headers={"Content-Type": self.content_type})
        if fault == "error200":
            return web.Response(status=200, body=self.error_body,
                                headers={"Content-Type": self.content_type})
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
