"""The OpenADR 2.0b VEN: registers with the DSO's VTN, turns events into constraints, prices
and demand charges in the constraint book, reports.

Built on openleadr's ``OpenADRClient``, with workarounds for its defects (each has a
regression test in ``tests/adapters/openadr/test_ven.py``):

- ``_perform_request`` returns a bare ``None`` for an empty body, which breaks its callers'
  tuple unpacking: normalised to ``(None, {})``.
- no implied cancellation, and an ``oadrDistributeEvent`` with no events never reaches the
  event handler: ``poll`` compares every distribution with the events in force.
- the VEN ignores ``startafter`` and ramp-up and has no event-end callback: the translation
  (``signals``) shifts and widens the windows and the VEN keeps its own end timers.
- ``on_cancel_party_registration`` sets the report lists to ``None``, so a later
  registration crashes: they are restored and the VEN registers again.
- SIMPLE ``current_value`` is always 0: levels are read from the intervals.

The VEN decides nothing: the opt decision is the aggregator's policy, and the constraint book
merges the limits.  A mandatory program's limits apply whatever the decision (a DSO limit is
never ignored); a voluntary program's limits apply only when opted in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from openleadr import OpenADRClient

from adapters.openadr.config import VenConfig
from adapters.openadr.signals import SOURCE, BaselineKw, EventError, EventPlan, translate
from adapters.state_file import read_json, write_json
from aggregator.constraints import ConstraintSink
from aggregator.dr_events import DrEvent
from aggregator.opt_policy import OptDecision, always_opt_in

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


OptPolicy = Callable[[EventPlan], Awaitable[OptDecision]]


@dataclass(frozen=True, slots=True)
class NodeTelemetry:
    """What the VEN reports for a resource: real power and energy since start."""

    power_w: float
    energy_wh: float
    online: bool = True


Telemetry = Callable[[str], NodeTelemetry]


@dataclass(slots=True)
class EventRecord:
    """An event as the VEN holds it: the plan, the decision, and whether limits apply."""

    plan: EventPlan
    decision: OptDecision
    applied: bool
    history: list[str] = field(default_factory=list)


class _Client(OpenADRClient):  # type: ignore[misc]
    """openleadr's client with the defect workarounds; it calls back into the ``Ven``."""

    def __init__(self, ven: Ven, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ven = ven
        self.received = 0
        self.response_codes: dict[str, int | None] = {}  # the last OpenADR code per service
        # the same objects add_report fills; openleadr sets the attributes to None on cancel
        self._report_lists: tuple[list[Any], dict[Any, Any]] = (self.reports,
                                                                 self.report_callbacks)
        self.add_hook("after_receive_xml", self._on_receive)

    async def _on_receive(self, _content: str) -> None:
        self.received += 1

    async def _perform_request(self, service: str, message: Any) -> tuple[Any, Any]:
        before = self.received
        result = await super()._perform_request(service, message)
        if self.received == before:
            self._ven._link(False, f"no answer from the VTN to {service}")
        else:
            self._ven._link(True, "")
        if result is None:  # openleadr returns a bare None for an empty body
            return None, {}
        message_type, payload = result
        if isinstance(payload, dict):
            code = payload.get("response", {}).get("response_code")
            self.response_codes[service] = int(code) if code is not None else None
        return message_type, payload

    async def poll(self) -> tuple[Any, Any]:
        message_type, payload = await super().poll()
        if message_type == "oadrDistributeEvent":
            present = {e["event_descriptor"]["event_id"] for e in payload.get("events") or []}
            for event_id in self._ven.implied_cancellations(present):
                self.received_events[:] = [
                    e for e in self.received_events
                    if e["event_descriptor"]["event_id"] != event_id]
                self.responded_events.pop(event_id, None)
        return message_type, payload

    async def on_event(self, event: dict[str, Any]) -> str:
        return await self._ven.handle_event(event)

    async def on_update_event(self, event: dict[str, Any]) -> str:
        return await self._ven.handle_event(event)

    async def on_cancel_party_registration(self, message: dict[str, Any]) -> None:
        await super().on_cancel_party_registration(message)
        if self.registration_id is None:  # restore what openleadr set to None
            self.reports, self.report_callbacks = self._report_lists
            self.report_requests: list[Any] = []
            self.incomplete_reports: dict[Any, Any] = {}
            self.pending_reports: asyncio.Queue[Any] = asyncio.Queue()
            self._ven.registration_lost("the VTN cancelled the registration")


class Ven:
    """One VEN: registration, polling, events to the constraint book, opt replies, reports."""

    def __init__(self, config: VenConfig, book: ConstraintSink, *,
                 opt_policy: OptPolicy = always_opt_in, baseline_kw: BaselineKw | None = None,
                 telemetry: Telemetry | None = None, clock: Clock | None = None,
                 report_interval: timedelta = timedelta(seconds=10),
                 journal: Callable[[DrEvent], object] | None = None) -> None:
        self.config = config
        self.book = book
        self.opt_policy = opt_policy
        self.baseline_kw = baseline_kw
        self.telemetry = telemetry
        self.journal = journal  # e.g. functools.partial(record_event, ledger)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.events: dict[str, EventRecord] = {}
        self.decisions: list[tuple[datetime, str, int, OptDecision]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._needs_registration = True
        state = self._load_state()
        self.client = _Client(
            self, ven_name=config.ven_name, vtn_url=config.vtn_url,
            ven_id=state.get("ven_id"),
            cert=str(config.cert) if config.cert else None,
            key=str(config.key) if config.key else None,
            ca_file=str(config.ca_file) if config.ca_file else None,
            vtn_fingerprint=config.vtn_fingerprint, show_fingerprint=False,
            disable_signature=config.cert is None, check_hostname=config.check_hostname,
            allow_jitter=False)
        if state.get("registration_id"):
            self.client.registration_id = state["registration_id"]
        if telemetry is not None:
            for resource in config.report_resources:
                self._add_reports(resource, report_interval)

    # -- registration --------------------------------------------------------------------
    @property
    def ven_id(self) -> str | None:
        value = self.client.ven_id
        return str(value) if value else None

    @property
    def registration_id(self) -> str | None:
        value = self.client.registration_id
        return str(value) if value else None

    async def register(self) -> bool:
        """Query, (re-)register and register reports; persist ven_id and registration_id."""
        client = self.client
        _, answer = await client.query_registration()
        request_id = (answer or {}).get("response", {}).get("request_id")
        result = await client.create_party_registration(ven_id=client.ven_id,
                                                         request_id=request_id)
        if result is None or not client.registration_id:
            log.warning("VEN %s: registration with %s failed", self.config.ven_name,
                        self.config.vtn_url)
            return False
        if self.config.poll_interval_s is not None:
            client.poll_frequency = timedelta(seconds=self.config.poll_interval_s)
        self._save_state()
        await client.register_reports(client.reports)
        if client.reports and (client.report_queue_task is None or
                               client.report_queue_task.done()):
            client.report_queue_task = asyncio.get_running_loop().create_task(
                client._report_queue_worker())
        self._needs_registration = False
        log.info("VEN %s registered: ven_id %s, registration %s, poll every %s",
                 self.config.ven_name, self.ven_id, self.registration_id,
                 client.poll_frequency)
        return True

    def registration_lost(self, reason: str) -> None:
        log.warning("VEN %s: registration lost (%s); registering again", self.config.ven_name,
                    reason)
        self._needs_registration = True
        self._save_state()

    def _load_state(self) -> dict[str, str]:
        try:
            data = read_json(self.config.state_file)
        except (OSError, ValueError) as err:
            log.warning("VEN state file %s unreadable (%s): registering afresh",
                        self.config.state_file, err)
            return {}
        if not isinstance(data, dict) or data.get("vtn_url") != self.config.vtn_url:
            return {}  # another VTN: its ids mean nothing here
        return {k: str(v) for k, v in data.items() if isinstance(v, str)}

    def _save_state(self) -> None:
        state = {"vtn_url": self.config.vtn_url, "ven_name": self.config.ven_name,
                 "ven_id": self.ven_id, "registration_id": self.registration_id}
        write_json(self.config.state_file, state)

    # -- running ---------------------------------------------------------------------------
    async def poll_once(self) -> None:
        """Register when needed, then poll the VTN once and handle what it sends."""
        if self._needs_registration and not await self.register():
            return
        ids = (self.ven_id, self.registration_id)
        await self.client._poll()
        if (self.ven_id, self.registration_id) != ids and self.registration_id:
            self._save_state()  # openleadr re-registered on the VTN's request
        code = self.client.response_codes.pop("OadrPoll", None)
        if code in (452, 463):  # the VTN does not know our ven_id / registration
            self.registration_lost(f"VTN answered {code} to a poll")

    async def run(self) -> None:
        """Poll until cancelled, at the VTN's (or the configured) interval."""
        if not self.client.scheduler.running:
            self.client.scheduler.start()  # openleadr runs report jobs on it
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bad message must not stop the VEN
                log.exception("VEN %s: poll failed", self.config.ven_name)
            interval = self.client.poll_frequency or timedelta(seconds=10)
            await asyncio.sleep(max(interval.total_seconds(), 1.0))

    def start(self) -> asyncio.Task[None]:
        self._poll_task = asyncio.get_running_loop().create_task(self.run())
        return self._poll_task

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self.client.scheduler.running:
            self.client.scheduler.shutdown(wait=False)
        if self.client.report_queue_task:
            self.client.report_queue_task.cancel()
        if self.client.client_session is not None:
            await self.client.client_session.close()

    def _link(self, up: bool, reason: str) -> None:
        now = self.clock()
        if up:
            self.book.link_up(SOURCE, now)
        else:
            self.book.link_lost(SOURCE, now, reason)

    # -- events ----------------------------------------------------------------------------
    async def handle_event(self, event: dict[str, Any]) -> str:
        """Translate, decide and apply one event (new or modified); return optIn / optOut."""
        now = self.clock()
        descriptor = event.get("event_descriptor")
        descriptor = descriptor if isinstance(descriptor, dict) else {}
        event_id = str(descriptor.get("event_id", "?"))
        try:
            plan = translate(event, self.config, received_at=now, baseline_kw=self.baseline_kw)
        except EventError as err:
            log.error("OpenADR event %s rejected: %s", event_id, err)
            decision = OptDecision(False, f"event cannot be read: {err}")
            modification = descriptor.get("modification_number")
            modification = modification if isinstance(modification, int) else -1
            self.decisions.append((now, event_id, modification, decision))
            await self._journal(DrEvent(
                source=SOURCE, event_id=event_id, modification_number=modification,
                status="invalid", program="", received_at=now, start=now, end=now,
                test_event=False, opt_in=False, applied=False, reason=decision.reason))
            return "optOut"
        previous = self.events.get(plan.event_id)
        if plan.cancelled:
            self._withdraw(plan.event_id, "cancelled by the VTN")
            decision = OptDecision(True, "cancellation acknowledged")
            await self._keep(plan, decision, applied=False, previous=previous)
            return "optIn"
        if plan.test_event:
            decision = OptDecision(True, "test event: logged, no action")
            log.info("OpenADR test event %s mod %s: no action", plan.event_id,
                     plan.modification_number)
            await self._keep(plan, decision, applied=False, previous=previous)
            return "optIn"
        if not plan.nodes:
            decision = OptDecision(False, "not applicable: no configured grid node for the "
                                          "event's targets")
        elif plan.unsupported and not (plan.constraints or plan.prices
                                       or plan.demand_charges):
            decision = OptDecision(False, "not applicable: unsupported signal(s) "
                                          + ", ".join(plan.unsupported))
        else:
            decision = await self.opt_policy(plan)
        program = self.config.program(plan.market_context)
        apply = decision.opt_in or program.mandatory
        if apply:
            self.book.publish(SOURCE, plan.scope, plan.constraints, now)
            self.book.publish_prices(SOURCE, plan.scope, plan.prices, now)
            self.book.publish_demand_charges(SOURCE, plan.scope, plan.demand_charges, now)
            self._arm_end_timer(plan)
        else:
            self._withdraw(plan.event_id, f"opted out: {decision.reason}")
        if not decision.opt_in:
            log.warning("OpenADR event %s mod %s: opt out (%s)%s", plan.event_id,
                        plan.modification_number, decision.reason,
                        "; limits applied anyway (mandatory program)" if apply else "")
        await self._keep(plan, decision, applied=apply, previous=previous)
        return "optIn" if decision.opt_in else "optOut"

    def implied_cancellations(self, present: set[str]) -> list[str]:
        """Withdraw held events missing from a full distribution; return their ids."""
        gone = [event_id for event_id, record in self.events.items()
                if event_id not in present and record.applied]
        for event_id in gone:
            self._withdraw(event_id, "implied cancellation: missing from the distribution")
        for event_id in [e for e in self.events if e not in present]:
            del self.events[event_id]
        return gone

    async def _keep(self, plan: EventPlan, decision: OptDecision, *, applied: bool,
                    previous: EventRecord | None) -> None:
        record = EventRecord(plan, decision, applied,
                             list(previous.history) if previous is not None else [])
        record.history.append(f"mod {plan.modification_number} {plan.status}: "
                              f"{'in' if decision.opt_in else 'out'} ({decision.reason})")
        self.events[plan.event_id] = record
        self.decisions.append((self.clock(), plan.event_id, plan.modification_number, decision))
        await self._journal(DrEvent(
            source=SOURCE, event_id=plan.event_id, modification_number=plan.modification_number,
            status=plan.status, program=plan.market_context, received_at=self.clock(),
            start=plan.start, end=plan.end, test_event=plan.test_event,
            opt_in=decision.opt_in, applied=applied, reason=decision.reason,
            limits=plan.constraints, prices=plan.prices, demand_charges=plan.demand_charges))

    async def _journal(self, record: DrEvent) -> None:
        """Hand the record to the event journal (the ledger) off the event loop."""
        if self.journal is not None:
            await asyncio.to_thread(self.journal, record)

    def _withdraw(self, event_id: str, reason: str) -> None:
        timer = self._timers.pop(event_id, None)
        if timer is not None:
            timer.cancel()
        record = self.events.get(event_id)
        if record is not None:
            record.applied = False
        self.book.withdraw(SOURCE, f"event:{event_id}", self.clock(), reason)

    def _arm_end_timer(self, plan: EventPlan) -> None:
        """Withdraw the event's limits at its end (openleadr has no end callback)."""
        old = self._timers.pop(plan.event_id, None)
        if old is not None:
            old.cancel()
        delay_s = max((plan.end - self.clock()).total_seconds(), 0.0)
        self._timers[plan.event_id] = asyncio.get_running_loop().call_later(
            delay_s, self._end_event, plan.event_id)

    def _end_event(self, event_id: str) -> None:
        self._timers.pop(event_id, None)
        self._withdraw(event_id, "event ended")

    # -- reports ---------------------------------------------------------------------------
    def _add_reports(self, resource: str, interval: timedelta) -> None:
        telemetry = self.telemetry
        assert telemetry is not None
        client = self.client
        client.add_report(callback=lambda: telemetry(resource).power_w, resource_id=resource,
                          measurement="REAL_POWER", unit="W", sampling_rate=interval,
                          report_specifier_id=f"gridflex-usage-{resource}",
                          report_duration=timedelta(hours=1))
        client.add_report(callback=lambda: telemetry(resource).energy_wh, resource_id=resource,
                          measurement="ENERGY_REAL", unit="Wh", sampling_rate=interval,
                          report_specifier_id=f"gridflex-usage-{resource}",
                          report_duration=timedelta(hours=1))
        client.add_report(callback=lambda: 1.0 if telemetry(resource).online else 0.0,
                          resource_id=resource, report_name="TELEMETRY_STATUS",
                          sampling_rate=interval,
                          report_specifier_id=f"gridflex-status-{resource}",
                          report_duration=timedelta(hours=1))
