"""A real openleadr VTN on loopback, as the DSO of the tests and of ``gridflex demo``.

It works around the VTN-side openleadr defects the VEN must survive:
- ``add_raw_event`` overwrites the active period (it looks for it in the wrong place), which
  drops ramp-up, recovery, notification and ``startafter``: the period is set again after it;
- there is no modify-event API: ``modify_event`` bumps the modification number in place;
- an emptied event list is answered with oadrResponse instead of an empty distribution;
- ``VTNService`` keeps class-level state (lookups, signing) and messaging a module-wide nonce
  cache: ``reset_openleadr_state`` clears them between servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openleadr import OpenADRServer, enums, objects, utils
from openleadr import messaging as oadr_messaging
from openleadr.service import vtn_service

PATH_PREFIX = "/OpenADR2/Simple/2.0b"


def reset_openleadr_state() -> None:
    """Forget openleadr's class- and module-level state left by an earlier server."""
    service = vtn_service.VTNService
    for name in ("ven_lookup", "fingerprint_lookup"):
        if name in service.__dict__:
            delattr(service, name)
    service.verify_message_signatures = True
    oadr_messaging.NONCE_CACHE.clear()


@dataclass(frozen=True, slots=True)
class Interval:
    """One interval of a signal: start, duration and payload."""

    start: datetime
    duration: timedelta
    payload: float


@dataclass(slots=True)
class VenRecord:
    ven_name: str
    ven_id: str
    registration_id: str
    fingerprint: str | None


@dataclass
class LoopbackVtn:
    """An ``OpenADRServer`` with the bookkeeping a test or the demo needs."""

    port: int
    vtn_id: str = "DSO-VTN"
    poll_interval: timedelta = timedelta(seconds=1)
    cert: Path | None = None
    key: Path | None = None
    http_cert: Path | None = None
    http_key: Path | None = None
    http_ca_file: Path | None = None
    ven_fingerprints: Mapping[str, str] | None = None
    vens: dict[str, VenRecord] = field(default_factory=dict)
    opt_replies: list[tuple[str, str, str]] = field(default_factory=list)
    reports: list[tuple[str, str, str, datetime, float]] = field(default_factory=list)
    registered_reports: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        reset_openleadr_state()
        self.server = OpenADRServer(
            vtn_id=self.vtn_id, http_port=self.port, http_host="127.0.0.1",
            requested_poll_freq=self.poll_interval, show_fingerprint=False,
            cert=str(self.cert) if self.cert else None,
            key=str(self.key) if self.key else None,
            http_cert=str(self.http_cert) if self.http_cert else None,
            http_key=str(self.http_key) if self.http_key else None,
            http_ca_file=str(self.http_ca_file) if self.http_ca_file else None,
            ven_lookup=self._lookup, show_server_cert_domain=False)
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._register_report)
        self._pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        poll_service = self.server.services["poll_service"]
        self._openleadr_poll = poll_service.handlers["oadrPoll"]
        poll_service.handlers = {**poll_service.handlers, "oadrPoll": self._poll}

    async def _poll(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Deliver a queued message first (openleadr queues only events)."""
        ven_id = str(payload.get("ven_id"))
        pending = self._pending.get(ven_id)
        if pending:
            message_type, message = pending.pop(0)
            if message_type == "oadrCancelPartyRegistration":
                self.vens.pop(ven_id, None)  # forgotten once the VEN has been told
            return message_type, message
        if self.server.events_updated.get(ven_id) and not self.server.events.get(ven_id):
            # openleadr answers an emptied event list with oadrResponse, so a VEN could never
            # see its last event go; 2.0b sends the (empty) distribution
            self.server.events_updated[ven_id] = False
            return "oadrDistributeEvent", {"events": []}
        result: tuple[str, dict[str, Any]] = await self._openleadr_poll(payload)
        return result

    @property
    def url(self) -> str:
        scheme = "https" if self.http_cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}{PATH_PREFIX}"

    async def start(self) -> None:
        await self.server.run_async()

    async def stop(self) -> None:
        await self.server.stop()
        reset_openleadr_state()

    # -- registration ----------------------------------------------------------------------
    def _register(self, info: dict[str, Any]) -> tuple[str, str] | bool:
        name = str(info.get("ven_name"))
        fingerprint = info.get("fingerprint")
        if self.ven_fingerprints is not None and (
                self.ven_fingerprints.get(name) != fingerprint):
            self.refused.append(f"{name}: fingerprint {fingerprint!r} not expected")
            return False  # CA-signed but unexpected VENs would register without this check
        existing = next((v for v in self.vens.values() if v.ven_name == name), None)
        if existing is not None:
            return existing.ven_id, existing.registration_id
        record = VenRecord(name, f"ven-{len(self.vens) + 1}", utils.generate_id(), fingerprint)
        self.vens[record.ven_id] = record
        return record.ven_id, record.registration_id

    def _lookup(self, ven_id: str) -> dict[str, Any]:
        record = self.vens.get(ven_id)
        if record is None:
            return {}
        return {"ven_id": record.ven_id, "ven_name": record.ven_name,
                "fingerprint": record.fingerprint, "registration_id": record.registration_id}

    def forget(self, ven_id: str) -> None:
        """Lose the VEN's registration (a VTN restored from an old backup, say)."""
        self.vens.pop(ven_id, None)

    def cancel_registration(self, ven_id: str) -> None:
        """Queue an oadrCancelPartyRegistration for the VEN's next poll."""
        record = self.vens[ven_id]
        message = ("oadrCancelPartyRegistration",
                   {"registration_id": record.registration_id, "ven_id": ven_id,
                    "request_id": utils.generate_id()})
        self._pending.setdefault(ven_id, []).append(message)

    # -- reports ---------------------------------------------------------------------------
    def _register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str | None,
                         scale: str | None, min_sampling_interval: timedelta,
                         max_sampling_interval: timedelta) -> tuple[Any, timedelta]:
        self.registered_reports.append((ven_id, resource_id, str(measurement)))

        async def on_data(data: Sequence[tuple[datetime, float]]) -> None:
            for moment, value in data:
                self.reports.append((ven_id, resource_id, str(measurement), moment, value))
        return on_data, min_sampling_interval

    # -- events ----------------------------------------------------------------------------
    def add_event(self, ven_id: str, event_id: str, signal_name: str, signal_type: str,
                  intervals: Sequence[Interval], *, market_context: str = "oadr://dso",
                  targets: Sequence[Mapping[str, str]] | None = None,
                  ramp_up: timedelta | None = None, recovery: timedelta | None = None,
                  startafter: timedelta | None = None, test_event: bool = False,
                  priority: int = 0, measurement: Mapping[str, Any] | None = None) -> Any:
        """Queue an event for ``ven_id``; returns openleadr's event object."""
        start = intervals[0].start
        end = intervals[-1].start + intervals[-1].duration
        signal = objects.EventSignal(
            signal_name=signal_name, signal_type=signal_type, signal_id=f"{event_id}-s0",
            intervals=[objects.Interval(dtstart=i.start, duration=i.duration,
                                        signal_payload=i.payload, uid=n)
                       for n, i in enumerate(intervals)],
            measurement=objects.Measurement(**measurement) if measurement else None)
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=0, market_context=market_context,
                event_status=enums.EVENT_STATUS.FAR, created_date_time=datetime.now(UTC),
                priority=priority, test_event=test_event),
            active_period=None, event_signals=[signal],
            targets=[objects.Target(**t) for t in (targets or [{"ven_id": ven_id}])],
            response_required="always")
        self.server.add_raw_event(ven_id, event, callback=self._on_opt)
        # openleadr just replaced the active period: put back what it dropped
        event.active_period = objects.ActivePeriod(
            dtstart=start, duration=end - start, ramp_up_period=ramp_up,
            recovery_period=recovery,
            tolerance={"startafter": startafter} if startafter else None)
        return event

    def modify_event(self, ven_id: str, event_id: str, intervals: Sequence[Interval]) -> None:
        """Replace the intervals of an event and bump its modification number."""
        event = self._event(ven_id, event_id)
        descriptor = event.event_descriptor
        descriptor.modification_number += 1
        descriptor.modification_date_time = datetime.now(UTC)
        event.event_signals[0].intervals = [
            objects.Interval(dtstart=i.start, duration=i.duration, signal_payload=i.payload,
                             uid=n) for n, i in enumerate(intervals)]
        period = event.active_period
        period.dtstart = intervals[0].start
        period.duration = intervals[-1].start + intervals[-1].duration - intervals[0].start
        self.server.events_updated[ven_id] = True

    def cancel_event(self, ven_id: str, event_id: str) -> None:
        self.server.cancel_event(ven_id, event_id)

    def remove_event(self, ven_id: str, event_id: str) -> None:
        """Drop the event from the VEN's distribution without cancelling it (implied cancel)."""
        event = self._event(ven_id, event_id)
        self.server.events[ven_id].remove(event)
        self.server.events_updated[ven_id] = True

    def _event(self, ven_id: str, event_id: str) -> Any:
        for event in self.server.events.get(ven_id, []):
            if event.event_descriptor.event_id == event_id:
                return event
        raise KeyError(f"no event {event_id!r} for {ven_id!r}")

    def _on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opt_replies.append((ven_id, event_id, opt_type))
