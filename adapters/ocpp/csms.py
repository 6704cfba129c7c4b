"""gridflex as the CSMS that stations connect to (OCPP-J over WebSocket: 1.6, 2.0.1, 2.1).

Stations connect to ``ws[s]://host:port/<station_id>`` and offer subprotocols; the
newest one both sides speak wins.  Security profile 1 is HTTP basic auth, 2 adds TLS,
3 is mutual TLS with the station id as the certificate's common name.  Unknown stations
and wrong passwords are refused before the WebSocket opens.

Meter values become ``MeterSample``s, handed to a ``MeterSink`` exactly once (duplicates
by natural key are dropped) from a queue: a slow or failing sink delays them, never
loses what was acknowledged to a station.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal, Protocol

from ocpp.exceptions import FormatViolationError, OCPPError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.messages import Call, MessageType, validate_payload
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from adapters.ocpp import compat
from adapters.ocpp.meter import parse_meter_values
from aggregator.model import MeterSample, parse_utc

log = logging.getLogger("gridflex.ocpp")
compat.install()  # ocpp 2.1.0 mangles 2.1 per-phase keys on send

SUBPROTOCOLS = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")  # preference order
DRAIN_BATCH_SAMPLES = 5000  # the most the meter sink is handed at once
SecurityProfile = Literal[1, 2, 3]


class MeterSink(Protocol):
    """Where meter samples go (settlement); ``put`` may be slow or fail and is retried."""

    async def put(self, samples: Sequence[MeterSample]) -> None: ...


@dataclass
class MemorySink:
    """A sink that keeps samples in memory by natural key (tests, demo)."""

    samples: dict[tuple[Any, ...], MeterSample] = field(default_factory=dict)

    async def put(self, samples: Sequence[MeterSample]) -> None:
        for sample in samples:
            self.samples.setdefault(sample.key, sample)


@dataclass(frozen=True)
class StationConfig:
    """A station allowed to connect: its password (profiles 1, 2), EVSE numbering, unit."""

    station_id: str
    password: str | None = None
    evses: dict[int, str] = field(default_factory=dict)  # OCPP EVSE/connector -> EVSE id
    rate_unit: Literal["A", "W"] = "A"  # A (with phases) for AC stations, W for DC


@dataclass(frozen=True)
class CsmsConfig:
    """Listening address, security, authorisation policy and timeouts."""

    stations: tuple[StationConfig, ...]
    host: str = "127.0.0.1"
    port: int = 0
    security_profile: SecurityProfile = 1
    ssl_context: ssl.SSLContext | None = None
    authorized_ids: frozenset[str] | None = None  # None: accept every id token
    heartbeat_interval_s: int = 300
    response_timeout_s: float = 10.0


@dataclass
class EvNeeds:
    """What an EV told its station it needs (OCPP 2.x NotifyEVChargingNeeds), in kW/kWh.

    ``None`` where the EV did not say; ``raw`` keeps the message as it came.
    """

    received_at: datetime
    departure: datetime | None
    energy_kwh: float | None
    raw: dict[str, Any]
    capacity_kwh: float | None = None  # DC: evEnergyCapacity
    soc: float | None = None  # DC: stateOfCharge, 0..1
    target_soc: float | None = None  # 2.1 V2X: targetSoC, 0..1
    max_charge_kw: float | None = None  # DC evMaxPower or 2.1 V2X maxChargePower
    max_discharge_kw: float | None = None  # 2.1 V2X maxDischargePower
    # 2.1 V2X energy requests are relative to the present SoC (ISO 15118-20), signed:
    min_v2x_energy_kwh: float | None = None  # evMinV2XEnergyRequest: to the V2X range's
    # bottom (negative: the battery is above it)
    max_energy_kwh: float | None = None  # evMaxEnergyRequest (else evMaxV2XEnergyRequest):
    # to the most the EV takes
    max_current_a: float | None = None  # AC evMaxCurrent, per phase (cable included)


def _first(*values: float | None) -> float | None:
    """The first value the EV gave (0 is an answer, not a gap)."""
    return next((value for value in values if value is not None), None)


def ev_needs(charging_needs: dict[str, Any], received_at: datetime) -> EvNeeds:
    """Translate a (snake_case) ``charging_needs``; a bad field raises FormatViolation."""
    def number(section: dict[str, Any], key: str, scale: float, path: str) -> float | None:
        value = section.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise FormatViolationError(details={"cause": f"{path}.{key}: bad value {value!r}"})
        return float(value) * scale

    def signed(section: dict[str, Any], key: str, scale: float) -> float | None:
        """An energy request relative to the present SoC: negative is an answer too."""
        value = section.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise FormatViolationError(details={
                "cause": f"v2x_charging_parameters.{key}: bad value {value!r}"})
        return float(value) * scale

    ac = charging_needs.get("ac_charging_parameters") or {}
    dc = charging_needs.get("dc_charging_parameters") or {}
    v2x = charging_needs.get("v2x_charging_parameters") or {}
    departure = charging_needs.get("departure_time")
    soc = number(dc, "state_of_charge", 0.01, "dc_charging_parameters")
    target = number(v2x, "target_soc", 0.01, "v2x_charging_parameters")
    for name, fraction in (("state_of_charge", soc), ("target_soc", target)):
        if fraction is not None and fraction > 1.0:
            raise FormatViolationError(details={"cause": f"{name}: above 100 %"})
    energy = _first(number(ac, "energy_amount", 1e-3, "ac_charging_parameters"),
                    number(dc, "energy_amount", 1e-3, "dc_charging_parameters"),
                    number(v2x, "ev_target_energy_request", 1e-3, "v2x_charging_parameters"))
    return EvNeeds(
        received_at=received_at,
        departure=_utc(departure, "charging_needs.departure_time")
        if departure is not None else None,
        energy_kwh=energy, raw=charging_needs,
        capacity_kwh=number(dc, "ev_energy_capacity", 1e-3, "dc_charging_parameters"),
        soc=soc, target_soc=target,
        max_charge_kw=_first(number(v2x, "max_charge_power", 1e-3, "v2x_charging_parameters"),
                             number(dc, "ev_max_power", 1e-3, "dc_charging_parameters")),
        max_discharge_kw=number(v2x, "max_discharge_power", 1e-3, "v2x_charging_parameters"),
        min_v2x_energy_kwh=signed(v2x, "ev_min_v2x_energy_request", 1e-3),
        max_energy_kwh=_first(signed(v2x, "ev_max_energy_request", 1e-3),
                              signed(v2x, "ev_max_v2x_energy_request", 1e-3)),
        max_current_a=number(ac, "ev_max_current", 1.0, "ac_charging_parameters"))


@dataclass(frozen=True)
class StationEvent:
    """A change a controller re-plans on: a transaction started or ended, an EV's needs,
    a station (dis)connected.  ``at`` is the station's own timestamp where it gave one."""

    kind: Literal["connected", "disconnected", "started", "ended", "needs"]
    station_id: str
    evse_number: int = 0
    transaction_id: str | None = None
    at: datetime | None = None
    needs: EvNeeds | None = None


StationListener = Callable[[StationEvent], None]


class Csms:
    """The central system: accepts stations, ingests meter values, sends profiles."""

    def __init__(self, config: CsmsConfig, sink: MeterSink,
                 listener: StationListener | None = None) -> None:
        if config.security_profile in (2, 3) and config.ssl_context is None:
            raise ValueError("ssl_context: security profiles 2 and 3 need TLS")
        self.config = config
        self.sink = sink
        self.listener = listener
        self.stations = {s.station_id: s for s in config.stations}
        self.connected: dict[str, Any] = {}
        self.transactions: dict[tuple[str, int], str] = {}
        self.ev_needs: dict[tuple[str, int], EvNeeds] = {}
        self.rejected_values: list[str] = []
        self._seen: set[tuple[Any, ...]] = set()
        self._queue: asyncio.Queue[list[MeterSample]] = asyncio.Queue()
        self._server: Server | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._next_tx = 1
        self.tx_profiles: dict[tuple[str, int], set[int]] = {}  # TxProfile ids sent per EVSE
        self.cleared: list[tuple[str, int, int, str]] = []  # (station, evse, id, status)

    # -- server lifecycle ------------------------------------------------------------------
    async def start(self) -> int:
        """Listen and return the port."""
        self._server = await serve(
            self._session, self.config.host, self.config.port, subprotocols=None,
            select_subprotocol=self._select_subprotocol, process_request=self._check_request,
            ssl=self.config.ssl_context)
        self._drain_task = asyncio.create_task(self._drain())
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop accepting, close sessions, and hand every queued sample to the sink."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._queue.join()
        if self._drain_task is not None:
            self._drain_task.cancel()

    def _select_subprotocol(self, _: ServerConnection, offered: Sequence[str]) -> Any:
        for protocol in SUBPROTOCOLS:
            if protocol in offered:
                return protocol
        return None

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        station_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        station = self.stations.get(station_id)
        if station is None:
            log.warning("refused unknown station %r", station_id)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown station\n")
        if self.config.security_profile == 3:
            peer = connection.transport.get_extra_info("ssl_object")
            cert = peer.getpeercert() if peer is not None else None
            names = [value for rdn in (cert or {}).get("subject", ()) for key, value in rdn
                     if key == "commonName"]
            if station_id not in names:
                log.warning("refused station %r: certificate names %s", station_id, names)
                return connection.respond(HTTPStatus.FORBIDDEN, "certificate mismatch\n")
            return None
        expected = f"{station_id}:{station.password or ''}".encode()
        header = request.headers.get("Authorization", "")
        try:
            given = base64.b64decode(header[6:], validate=True) if header.startswith(
                "Basic ") else b""
        except ValueError:  # not base64 at all: as good as no credentials
            given = b""
        if station.password is None or not hmac.compare_digest(given, expected):
            log.warning("refused station %r: bad or missing basic auth", station_id)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
        return None

    async def _session(self, connection: ServerConnection) -> None:
        station_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1] \
            if connection.request is not None else ""
        handler_class = {"ocpp1.6": _Station16, "ocpp2.0.1": _Station201,
                         "ocpp2.1": _Station21}.get(connection.subprotocol or "")
        if handler_class is None:
            log.warning("station %r offered no OCPP version we speak", station_id)
            await connection.close(1002, "no common OCPP subprotocol")
            return
        station = handler_class(station_id, connection, self)
        self.connected[station_id] = station
        log.info("station %r connected (%s)", station_id, connection.subprotocol)
        self.tell(StationEvent("connected", station_id))
        try:
            await station.start()
        except Exception as err:  # a dropped connection ends the session, not the CSMS
            log.info("station %r disconnected: %s", station_id, err)
        finally:
            if self.connected.get(station_id) is station:
                del self.connected[station_id]
                self.tell(StationEvent("disconnected", station_id))

    def tell(self, event: StationEvent) -> None:
        """Hand ``event`` to the listener; a failing listener is logged, never fatal."""
        if self.listener is None:
            return
        try:
            self.listener(event)
        except Exception:
            log.exception("station event listener failed on %s", event)

    # -- meter values ----------------------------------------------------------------------
    def ingest(self, station_id: str, evse_number: int, transaction_id: str | None,
               meter_values: Any) -> None:
        """Parse, de-duplicate and queue meter values; bad values are logged and counted."""
        evse_id = self.stations[station_id].evses.get(evse_number)
        samples, errors = parse_meter_values(
            meter_values, station_id=station_id, evse_number=evse_number,
            transaction_id=transaction_id, received_at=datetime.now(UTC), evse_id=evse_id)
        for error in errors:
            log.warning("station %r: rejected meter value %s", station_id, error)
        self.rejected_values.extend(errors)
        fresh = [s for s in samples if s.key not in self._seen]
        self._seen.update(s.key for s in fresh)
        if fresh:
            self._queue.put_nowait(fresh)

    async def _drain(self) -> None:
        """Hand queued samples to the sink in order; what queued up while the sink was busy
        goes as one batch (a busy ledger gets fewer, larger writes), retried until taken."""
        backoff_s = 0.05
        while True:
            batch = list(await self._queue.get())
            taken = 1
            while not self._queue.empty() and len(batch) < DRAIN_BATCH_SAMPLES:
                batch.extend(self._queue.get_nowait())
                taken += 1
            while True:
                try:
                    await self.sink.put(batch)
                    backoff_s = 0.05
                    break
                except Exception as err:  # keep the batch and retry: nothing acked is lost
                    log.warning("meter sink failed (%s); retrying in %.2f s", err, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
            for _ in range(taken):
                self._queue.task_done()

    def start_transaction(self, station_id: str, evse_number: int,
                          transaction_id: str | None = None) -> str:
        if transaction_id is None:
            transaction_id = str(self._next_tx)
            self._next_tx += 1
        self.transactions[(station_id, evse_number)] = transaction_id
        return transaction_id

    def authorized(self, id_token: str) -> bool:
        ids = self.config.authorized_ids
        return ids is None or id_token in ids

    # -- commands to stations --------------------------------------------------------------
    async def set_charging_profile(self, station_id: str, payload: dict[str, Any]) -> str:
        """Send a SetChargingProfile payload (from ``adapters.ocpp.profiles``); its status."""
        station = self._station(station_id)
        if isinstance(station, _Station16):
            number, profile = payload["connectorId"], payload["csChargingProfiles"]
            profile_id = profile["chargingProfileId"]
        else:
            number, profile = payload["evseId"], payload["chargingProfile"]
            profile_id = profile["id"]
        status = await self._status_camel(station, "SetChargingProfile", payload)
        if status == "Accepted" and profile["chargingProfilePurpose"] == "TxProfile":
            self.tx_profiles.setdefault((station_id, number), set()).add(int(profile_id))
        return status

    async def clear_after_transaction(self, station_id: str, evse_number: int) -> None:
        """At session end, clear the TxProfiles sent for that EVSE (and say so)."""
        for profile_id in sorted(self.tx_profiles.pop((station_id, evse_number), set())):
            try:
                status = await self.clear_charging_profile(station_id, profile_id)
            except LookupError:
                status = "NotConnected"
            self.cleared.append((station_id, evse_number, profile_id, status))

    async def get_composite_schedule(self, station_id: str, evse_number: int, duration_s: int,
                                     rate_unit: str = "A") -> dict[str, Any] | None:
        """The station's own view of what it will draw (read-back); None if it gave none."""
        station = self._station(station_id)
        if isinstance(station, _Station16):
            request: Any = call16.GetCompositeSchedule(
                connector_id=evse_number, duration=duration_s, charging_rate_unit=rate_unit)
        else:
            module = call21 if isinstance(station, _Station21) else call201
            request = module.GetCompositeSchedule(duration=duration_s, evse_id=evse_number,
                                                  charging_rate_unit=rate_unit)
        response, problem = await self._call(station, request)
        if response is None or getattr(response, "status", None) != "Accepted":
            log.info("station %r gave no composite schedule: %s", station_id,
                     problem or getattr(response, "status", None))
            return None
        # 1.6 numbers arrive as Decimal (ocpp 2.1.0), 2.x ones as float: return floats
        plain: dict[str, Any] = json.loads(json.dumps(
            {k: v for k, v in vars(response).items() if v is not None}, default=float))
        return plain

    async def clear_charging_profile(self, station_id: str, profile_id: int) -> str:
        station = self._station(station_id)
        if isinstance(station, _Station16):
            request: Any = call16.ClearChargingProfile(id=profile_id)
        else:
            module = call21 if isinstance(station, _Station21) else call201
            request = module.ClearChargingProfile(charging_profile_id=profile_id)
        return await self._status(station, request)

    def _station(self, station_id: str) -> Any:
        try:
            return self.connected[station_id]
        except KeyError:
            raise LookupError(f"station {station_id!r} is not connected") from None

    async def _call(self, station: Any, request: Any) -> tuple[Any, str | None]:
        """The station's answer, or None and why: a timeout, our payload refused by the
        library before sending, or the station's CallError (code and description)."""
        try:
            response = await asyncio.wait_for(station.call(request, suppress=False),
                                              self.config.response_timeout_s)
        except TimeoutError:
            return None, "Timeout"
        except OCPPError as err:
            return None, _problem(err)
        return response, None

    async def _status_camel(self, station: Any, action: str, payload: dict[str, Any]) -> str:
        """Like ``_status`` for a payload already in the wire's camelCase (as
        ``adapters.ocpp.profiles`` writes it).  ``ChargePoint.call`` would copy it into a
        dataclass, back into a dict and re-key it: 1-3 ms a profile of 24-96 periods, most
        of a fan-out's encoding (``gridflex bench ocpp``).  Validated against the schema as
        ``call`` does, request and response."""
        call = Call(str(uuid.uuid4()), action, payload)
        try:
            await validate_payload(call, station._ocpp_version)
            async with station._call_lock:
                await station._send(call.to_json())
                response = await station._get_specific_response(
                    call.unique_id, self.config.response_timeout_s)
            if response.message_type_id == MessageType.CallError:
                raise response.to_exception()
            response.action = action
            await validate_payload(response, station._ocpp_version)
        except TimeoutError:
            return "Timeout"
        except OCPPError as err:
            return _problem(err)
        return str(response.payload.get("status", "NoStatus"))

    async def _status(self, station: Any, request: Any) -> str:
        """The status the station answered; otherwise ``Timeout`` or the error's type and
        description (a CallError from the station, or a payload the ocpp library refused
        to send: both arrive as the same exceptions)."""
        response, problem = await self._call(station, request)
        if response is None:
            return problem or "NoStatus"
        return str(getattr(response, "status", "NoStatus"))


def _problem(err: OCPPError) -> str:
    """An OCPP error as a status: its type, description and details."""
    return f"{type(err).__name__}: {err.description} {err.details or ''}".strip()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(value: Any, path: str) -> datetime:
    """A date-time field from a station, or a FormatViolation naming it (ocpp never checks
    date-time formats itself)."""
    try:
        return parse_utc(value, path)
    except ValueError as err:
        raise FormatViolationError(details={"cause": str(err)}) from None


class _Station16(ChargePoint16):  # type: ignore[misc]
    """An OCPP 1.6 station session."""


    def __init__(self, station_id: str, connection: ServerConnection, csms: Csms) -> None:
        super().__init__(station_id, connection, response_timeout=csms.config.response_timeout_s)
        self.csms = csms
        self._ended = 0  # connector of the transaction that just stopped

    @on("BootNotification")
    def on_boot(self, charge_point_vendor: str, charge_point_model: str,
                **_: Any) -> Any:
        return result16.BootNotification(current_time=_now(), status="Accepted",
                                         interval=self.csms.config.heartbeat_interval_s)

    @on("Heartbeat")
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str) -> Any:
        status = "Accepted" if self.csms.authorized(id_tag) else "Invalid"
        return result16.Authorize(id_tag_info={"status": status})

    @on("StartTransaction")
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                 **_: Any) -> Any:
        if not self.csms.authorized(id_tag):
            return result16.StartTransaction(transaction_id=0,
                                             id_tag_info={"status": "Invalid"})
        at = _utc(timestamp, "timestamp")
        tx = self.csms.start_transaction(self.id, connector_id)
        self.csms.ingest(self.id, connector_id, tx, [{"timestamp": timestamp, "sampled_value": [
            {"value": meter_start, "context": "Transaction.Begin", "unit": "Wh"}]}])
        self.csms.tell(StationEvent("started", self.id, connector_id, tx, at))
        return result16.StartTransaction(transaction_id=int(tx),
                                         id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int,
                transaction_data: list[dict[str, Any]] | None = None, **_: Any) -> Any:
        at = _utc(timestamp, "timestamp")
        tx = str(transaction_id)
        connector = next((c for (s, c), t in self.csms.transactions.items()
                          if s == self.id and t == tx), 0)
        self.csms.ingest(self.id, connector, tx, (transaction_data or []) + [
            {"timestamp": timestamp, "sampled_value": [
                {"value": meter_stop, "context": "Transaction.End", "unit": "Wh"}]}])
        self.csms.transactions.pop((self.id, connector), None)
        self._ended = connector
        self.csms.tell(StationEvent("ended", self.id, connector, tx, at))
        return result16.StopTransaction()

    @after("StopTransaction")
    async def after_stop(self, **_: Any) -> None:
        await self.csms.clear_after_transaction(self.id, self._ended)

    @on("MeterValues")
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]],
                        transaction_id: int | None = None) -> Any:
        tx = str(transaction_id) if transaction_id is not None else None
        self.csms.ingest(self.id, connector_id, tx, meter_value)
        return result16.MeterValues()


def _station2x(base: type, results: Any, version: str) -> type:
    """The 2.0.1 and 2.1 station sessions: the same handlers on each version's classes."""

    class Station2x(base):  # type: ignore[misc]
        def __init__(self, station_id: str, connection: ServerConnection, csms: Csms) -> None:
            super().__init__(station_id, connection,
                             response_timeout=csms.config.response_timeout_s)
            self.csms = csms
            self._ended = 0  # EVSE of the transaction that just ended

        async def _handle_call(self, msg: Any) -> None:
            # ocpp 2.1.0 sends no reply at all to a 2.1 action without a handler: answer
            # NotImplemented like 1.6 and 2.0.1 do
            if msg.action not in self.route_map:
                raise OcppNotImplemented(details={"cause": f"no handler for {msg.action}"})
            await super()._handle_call(msg)

        @on("BootNotification")
        def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
            return results.BootNotification(current_time=_now(), status="Accepted",
                                            interval=self.csms.config.heartbeat_interval_s)

        @on("Heartbeat")
        def on_heartbeat(self) -> Any:
            return results.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def on_status(self, **_: Any) -> Any:
            return results.StatusNotification()

        @on("Authorize")
        def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
            return results.Authorize(id_token_info=self._token_info(id_token))

        def _token_info(self, id_token: dict[str, Any]) -> dict[str, str]:
            accepted = self.csms.authorized(str(id_token.get("id_token", "")))
            return {"status": "Accepted" if accepted else "Invalid"}

        @on("TransactionEvent")
        def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str,
                                 seq_no: int, transaction_info: dict[str, Any],
                                 evse: dict[str, Any] | None = None,
                                 meter_value: list[dict[str, Any]] | None = None,
                                 id_token: dict[str, Any] | None = None, **_: Any) -> Any:
            at = _utc(timestamp, "timestamp")
            tx = str(transaction_info["transaction_id"])
            number = int(evse["id"]) if evse else next(
                (c for (s, c), t in self.csms.transactions.items()
                 if s == self.id and t == tx), 0)
            if event_type == "Started":
                self.csms.start_transaction(self.id, number, tx)
            if meter_value:
                self.csms.ingest(self.id, number, tx, meter_value)
            if event_type == "Started":
                self.csms.tell(StationEvent("started", self.id, number, tx, at))
            if event_type == "Ended":
                self.csms.transactions.pop((self.id, number), None)
                self._ended = number
                self.csms.tell(StationEvent("ended", self.id, number, tx, at))
            if id_token is not None:
                return results.TransactionEvent(id_token_info=self._token_info(id_token))
            return results.TransactionEvent()

        @after("TransactionEvent")
        async def after_transaction_event(self, event_type: str, **_: Any) -> None:
            if event_type == "Ended":
                await self.csms.clear_after_transaction(self.id, self._ended)

        @on("MeterValues")
        def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]]) -> Any:
            self.csms.ingest(self.id, evse_id, self.csms.transactions.get((self.id, evse_id)),
                             meter_value)
            return results.MeterValues()

        @on("NotifyEVChargingNeeds")
        def on_needs(self, evse_id: int, charging_needs: dict[str, Any], **_: Any) -> Any:
            needs = ev_needs(charging_needs, datetime.now(UTC))
            self.csms.ev_needs[(self.id, evse_id)] = needs
            self.csms.tell(StationEvent("needs", self.id, evse_id,
                                        self.csms.transactions.get((self.id, evse_id)),
                                        needs=needs))
            return results.NotifyEVChargingNeeds(status="Accepted")

    Station2x.__name__ = Station2x.__qualname__ = f"Station{version}"
    return Station2x


_Station201 = _station2x(ChargePoint201, result201, "201")
_Station21 = _station2x(ChargePoint21, result21, "21")

__all__ = ["Csms", "CsmsConfig", "EvNeeds", "MemorySink", "MeterSink", "StationConfig",
           "StationEvent", "StationListener"]
