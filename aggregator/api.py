"""The operator HTTP API (aiohttp, JSON): health, nodes, limits with provenance, plans,
sessions, settlement; ``/openapi.json`` describes it.  Read-only but for ``POST /replan``.

Query times are ISO 8601 with an offset; a bad query parameter is a 400 naming it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aggregator.ledger import settle_sessions
from aggregator.model import parse_utc
from aggregator.plans import journaled_plans

if TYPE_CHECKING:
    from aggregator.service import Service

JSON = dict[str, Any]


class QueryError(ValueError):
    """A bad query parameter (answered with 400 and the parameter's name)."""


def _moment(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return parse_utc(raw, name)
    except ValueError as err:
        raise QueryError(str(err)) from None


def _count(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise QueryError(f"{name}: an integer in 1..10000, got {raw!r}")
    return int(raw)


class OperatorApi:
    """Routes over a running ``Service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.app = web.Application(middlewares=[self._errors])
        routes = [
            ("GET", "/health", self.health), ("GET", "/nodes", self.nodes),
            ("GET", "/constraints", self.constraints), ("GET", "/schedule", self.schedule),
            ("GET", "/plans", self.plans), ("GET", "/sessions", self.sessions),
            ("GET", "/settlement", self.settlement), ("POST", "/replan", self.replan),
            ("GET", "/openapi.json", self.openapi)]
        for method, path, handler in routes:
            self.app.router.add_route(method, path, handler)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (``port`` 0 picks a free one)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server: Any = site._server
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except QueryError as err:
            return web.json_response({"error": str(err)}, status=400)

    # -- handlers ------------------------------------------------------------------------
    async def health(self, _: web.Request) -> web.Response:
        s = self.service
        plans = s.controller.plans
        links = {name: {"up": up, "since": since.isoformat(), "reason": reason}
                 for name, (up, since, reason) in s.book.links().items()}
        return web.json_response({
            "status": "ok", "now": s.clock().isoformat(), "started_at": s.started_at.isoformat(),
            "stations_configured": len(s.config.stations),
            "stations_connected": sorted(s.csms.connected), "dso_links": links,
            "last_plan_at": plans[-1].planned_at.isoformat() if plans else None,
            "planning": s.controller.planning,
            "pending_triggers": s.controller.pending_triggers,
            "meter_samples_stored": s.meter.stored})

    async def nodes(self, _: web.Request) -> web.Response:
        tree = self.service.config.tree
        return web.json_response({
            "nodes": [{"id": n.node_id, "kind": n.kind.value, "parent": n.parent_id,
                       "name": n.name} for n in tree.nodes],
            "evses": [{"id": e.evse_id, "node": e.node_id, "max_import_kw": e.max_import_kw,
                       "max_export_kw": e.max_export_kw, "v2g": e.v2g_capable,
                       "ocpp_version": e.ocpp_version.value} for e in tree.evses]})

    async def constraints(self, request: web.Request) -> web.Response:
        """Every cap in force at ``at`` (default now) per node, the binding one marked,
        with where it came from."""
        s = self.service
        at = _moment(request, "at", s.clock())
        found = []
        for node_id in [n.node_id for n in s.config.tree.nodes] + [
                e.evse_id for e in s.config.tree.evses]:
            for reason in s.book.why(node_id, at):
                c = reason.constraint
                found.append({
                    "node_id": node_id, "direction": reason.direction,
                    "limit_kw": reason.limit_kw, "binding": reason.binding,
                    "source": c.source, "source_ref": c.source_ref,
                    "start": c.start.isoformat(), "end": c.end.isoformat(),
                    "received_at": c.received_at.isoformat(),
                    "expires_at": c.expires_at.isoformat() if c.expires_at else None,
                    "why": reason.describe()})
        return web.json_response({"at": at.isoformat(), "constraints": found})

    async def schedule(self, _: web.Request) -> web.Response:
        plans = self.service.controller.plans
        if not plans:
            return web.json_response({"error": "no plan yet"}, status=404)
        return web.json_response(plans[-1].to_json())

    async def plans(self, request: web.Request) -> web.Response:
        limit = _count(request, "limit", 20)
        since = _moment(request, "since", self.service.started_at - timedelta(days=3650))
        journaled = journaled_plans(self.service.ledger, since=since, limit=limit)
        return web.json_response({"plans": [
            {k: v for k, v in p.to_json().items() if k != "power_kw"} for p in journaled]})

    async def sessions(self, _: web.Request) -> web.Response:
        tracker = self.service.tracker

        def view(live: Any) -> JSON:
            s = live.session
            return {"session_id": s.session_id, "evse_id": s.evse_id,
                    "arrival": s.arrival.isoformat(), "departure": s.departure.isoformat(),
                    "soc": round(live.soc_now(), 4), "power_kw": live.power_kw,
                    "imported_kwh": round(live.imported_kwh, 4),
                    "exported_kwh": round(live.exported_kwh, 4),
                    "ended_at": live.ended_at.isoformat() if live.ended_at else None}

        return web.json_response({"live": [view(x) for x in tracker.live.values()],
                                  "finished": [view(x) for x in tracker.finished]})

    async def settlement(self, request: web.Request) -> web.Response:
        s = self.service
        end = _moment(request, "to", s.clock())
        start = _moment(request, "from", end - timedelta(days=1))
        if end <= start:
            raise QueryError("to: must be after from")
        rows = settle_sessions(s.ledger, start, end)
        return web.json_response({
            "from": start.isoformat(), "to": end.isoformat(), "sessions": len(rows),
            "imported_kwh": round(sum(r.imported_kwh for r in rows), 4),
            "exported_kwh": round(sum(r.exported_kwh for r in rows), 4),
            "flagged_sessions": sum(1 for r in rows if r.resets or r.gaps),
            "rows": [{"station_id": r.station_id, "evse_number": r.evse_number,
                      "transaction_id": r.transaction_id, "evse_id": r.evse_id,
                      "imported_kwh": round(r.imported_kwh, 4),
                      "exported_kwh": round(r.exported_kwh, 4), "resets": r.resets,
                      "gaps": r.gaps} for r in rows]})

    async def replan(self, _: web.Request) -> web.Response:
        self.service.controller.request("operator", "POST /replan")
        return web.json_response({"requested": True}, status=202)

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(OPENAPI)


def _get(summary: str, params: list[JSON] | None = None) -> JSON:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": {"description": "JSON",
                                          "content": {"application/json": {}}},
                                  "400": {"description": "a bad query parameter (named)"}}}}


def _param(name: str, kind: str, text: str) -> JSON:
    schema = {"type": "string", "format": "date-time"} if kind == "time" else {
        "type": "integer", "minimum": 1, "maximum": 10_000}
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": text}


OPENAPI: JSON = {
    "openapi": "3.1.0",
    "info": {"title": "gridflex operator API", "version": "1"},
    "paths": {
        "/health": _get("service, station and DSO link health"),
        "/nodes": _get("the grid tree and its EVSEs"),
        "/constraints": _get("caps in force per node with provenance",
                             [_param("at", "time", "moment (default now), ISO 8601 + offset")]),
        "/schedule": _get("the latest plan: kW per EVSE and interval, triggers, answers"),
        "/plans": _get("journaled plans, newest last", [
            _param("limit", "int", "how many (default 20)"),
            _param("since", "time", "planned at or after")]),
        "/sessions": _get("running and finished sessions with metered energy"),
        "/settlement": _get("imported and exported kWh per session from the ledger", [
            _param("from", "time", "period start (default: a day before to)"),
            _param("to", "time", "period end (default now)")]),
        "/replan": {"post": {"summary": "ask the controller for a re-plan now",
                             "responses": {"202": {"description": "requested"}}}},
        "/openapi.json": _get("this description"),
    },
}
