"""Many lean OCPP stations in one process, for ``gridflex bench ocpp``.

``python -m adapters.ocpp.station_fleet --url ws://127.0.0.1:PORT --stations N`` opens N
stations at once (versions 1.6, 2.0.1, 2.1 in turn; real OCPP-J over WebSocket through
the ``ocpp`` library, which validates every message against its schema).  Each boots,
then sends MeterValues every ``--meter-interval-s`` (from a random phase) and answers
SetChargingProfile (Accepted, kept per EVSE), GetCompositeSchedule (what it was sent)
and ClearChargingProfile.  A ``SimStation`` simulates energy and EVs; these do not, so
one core carries thousands of them.

The parent reads JSON lines on stdout (``connected``, then ``report`` after ``stop``
arrives on stdin): what connected, meter messages sent and acknowledged, and per station
how many profiles and clears it answered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from adapters.ocpp import compat

compat.install()

VERSIONS = ("1.6", "2.0.1", "2.1")
SAMPLES_PER_METER_MSG = 2  # Energy.Active.Import.Register and Power.Active.Import
_SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


def member(index: int, prefix: str = "cs") -> tuple[str, str, str]:
    """Station ``index`` (0-based) of a fleet: its id, OCPP version and password; the
    bench configures its CSMS from the same function."""
    station_id = f"{prefix}-{index + 1:05d}"
    return station_id, VERSIONS[index % len(VERSIONS)], f"pw-{station_id}"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Lean:
    """What every lean station does, whatever its version (mixed into each version's
    ``ChargePoint``): keep the last profile per EVSE, count answers, meter."""

    version: str
    results: Any
    call: Any

    def _init_lean(self) -> None:
        self.profiles: dict[int, dict[str, Any]] = {}
        self.answered_profiles = 0
        self.answered_clears = 0
        self.meter_sent = 0
        self.meter_acked = 0
        self.register_wh = 0
        self._last_stamp: datetime | None = None

    def _kept(self, number: int, profile: dict[str, Any]) -> str:
        self.profiles[number] = profile
        self.answered_profiles += 1
        return "Accepted"

    def _cleared(self) -> str:
        self.answered_clears += 1
        return "Unknown"  # the bench clears a profile id nobody was sent

    def meter_value(self) -> dict[str, Any]:
        """One reading, stamped in ms and strictly later than the last (a sample's key
        includes its time: two readings must never collide)."""
        now = datetime.now(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self.register_wh += 3
        readings = (("Energy.Active.Import.Register", self.register_wh, "Wh"),
                    ("Power.Active.Import", 7400.0, "W"))
        sampled: list[dict[str, Any]]
        if self.version == "1.6":
            sampled = [{"value": str(value), "measurand": name, "unit": unit}
                       for name, value, unit in readings]
        else:
            sampled = [{"value": float(value), "measurand": name,
                        "unit_of_measure": {"unit": unit}} for name, value, unit in readings]
        return {"timestamp": _stamp(self._last_stamp), "sampled_value": sampled}

    async def meter(self, interval_s: float, phase_s: float, stop: asyncio.Event) -> None:
        """MeterValues every ``interval_s`` until ``stop`` (never cut mid-call)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), phase_s)
        while not stop.is_set():
            if self.version == "1.6":
                request: Any = call16.MeterValues(connector_id=1,
                                                  meter_value=[self.meter_value()])
            else:
                module = call21 if self.version == "2.1" else call201
                request = module.MeterValues(evse_id=1, meter_value=[self.meter_value()])
            self.meter_sent += 1
            try:
                await self.call(request, suppress=False)
                self.meter_acked += 1
            except Exception as err:  # counted as sent, not acked: the parent sees it
                logging.getLogger("gridflex.fleet").warning("meter value failed: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def composite(self, number: int, duration_s: int, unit: str) -> tuple[str, Any] | None:
        """The last profile's schedule (start, periods) for EVSE ``number`` in ``unit``,
        snake_case as the library hands it over; None without one in that unit."""
        profile = self.profiles.get(number)
        if profile is None:
            return None
        schedule = profile["charging_schedule"]
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        if schedule.get("charging_rate_unit") != unit:
            return None
        periods = [{k: float(v) if k == "limit" else v for k, v in period.items()}
                   for period in schedule["charging_schedule_period"]]
        return str(schedule["start_schedule"]), periods


class Station16(_Lean, ChargePoint16):  # type: ignore[misc]
    """A lean OCPP 1.6 station."""

    version = "1.6"

    @on("SetChargingProfile")
    def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        return result16.SetChargingProfile(status=self._kept(connector_id,
                                                             cs_charging_profiles))

    @on("ClearChargingProfile")
    def on_clear(self, **_: Any) -> Any:
        return result16.ClearChargingProfile(status=self._cleared())

    @on("GetCompositeSchedule")
    def on_composite(self, connector_id: int, duration: int,
                     charging_rate_unit: str = "A") -> Any:
        found = self.composite(connector_id, duration, charging_rate_unit)
        if found is None:
            return result16.GetCompositeSchedule(status="Rejected")
        start, periods = found
        return result16.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start=start,
            charging_schedule={"duration": duration, "start_schedule": start,
                               "charging_rate_unit": charging_rate_unit,
                               "charging_schedule_period": periods})


class _Handlers2x(_Lean):
    """The 2.0.1 and 2.1 handlers (the same on each version's classes)."""

    @on("SetChargingProfile")
    def on_set(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return self.results.SetChargingProfile(status=self._kept(evse_id, charging_profile))

    @on("ClearChargingProfile")
    def on_clear(self, **_: Any) -> Any:
        return self.results.ClearChargingProfile(status=self._cleared())

    @on("GetCompositeSchedule")
    def on_composite(self, duration: int, evse_id: int, charging_rate_unit: str = "A",
                     **_: Any) -> Any:
        found = self.composite(evse_id, duration, charging_rate_unit)
        if found is None:
            return self.results.GetCompositeSchedule(status="Rejected")
        start, periods = found
        return self.results.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": start,
            "charging_rate_unit": charging_rate_unit, "charging_schedule_period": periods})


class Station201(_Handlers2x, ChargePoint201):  # type: ignore[misc]
    """A lean OCPP 2.0.1 station."""

    version = "2.0.1"
    results = result201


class Station21(_Handlers2x, ChargePoint21):  # type: ignore[misc]
    """A lean OCPP 2.1 station."""

    version = "2.1"
    results = result21


_CLASSES: dict[str, Any] = {"1.6": Station16, "2.0.1": Station201, "2.1": Station21}


async def open_station(url: str, index: int, prefix: str, timeout_s: float) -> Any:
    """Connect station ``index`` with basic auth and boot it; its ``ChargePoint``."""
    station_id, version, password = member(index, prefix)
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    ws = await connect(f"{url.rstrip('/')}/{station_id}",
                       subprotocols=[Subprotocol(_SUBPROTOCOL[version])],
                       additional_headers={"Authorization": f"Basic {token}"},
                       open_timeout=timeout_s, ping_interval=None, max_queue=None)
    station = _CLASSES[version](station_id, ws, response_timeout=timeout_s)
    station._init_lean()
    station.ws = ws
    station.task = asyncio.create_task(station.start())
    if version == "1.6":
        boot = await station.call(call16.BootNotification(
            charge_point_model="LeanStation", charge_point_vendor="gridflex"), suppress=False)
    else:
        module = call21 if version == "2.1" else call201
        boot = await station.call(module.BootNotification(
            charging_station={"model": "LeanStation", "vendor_name": "gridflex"},
            reason="PowerUp"), suppress=False)
    if boot.status != "Accepted":
        raise ConnectionRefusedError(f"{station_id}: boot {boot.status}")
    return station


async def run_fleet(url: str, count: int, *, prefix: str, meter_interval_s: float,
                    seed: int, timeout_s: float, out: Any = sys.stdout) -> None:
    """Open ``count`` stations at once, meter until ``stop`` on stdin, then report."""
    rng = random.Random(seed)
    started = time.monotonic()
    opened = await asyncio.gather(*(open_station(url, i, prefix, timeout_s)
                                    for i in range(count)), return_exceptions=True)
    stations = [s for s in opened if not isinstance(s, BaseException)]
    failures = sorted({f"{type(e).__name__}: {e}" for e in opened
                       if isinstance(e, BaseException)})
    _say(out, event="connected", stations=count, connected=len(stations),
         connect_s=round(time.monotonic() - started, 4), failures=failures[:5])
    stop = asyncio.Event()
    meters = [asyncio.create_task(s.meter(meter_interval_s, rng.uniform(0, meter_interval_s),
                                          stop)) for s in stations]
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("stop", ""):
        pass
    stop.set()
    await asyncio.gather(*meters)
    _say(out, event="report", connected=len(stations),
         meter_sent=sum(s.meter_sent for s in stations),
         meter_acked=sum(s.meter_acked for s in stations),
         samples_per_meter_msg=SAMPLES_PER_METER_MSG,
         profiles={s.id: s.answered_profiles for s in stations},
         clears={s.id: s.answered_clears for s in stations})
    for station in stations:
        station.task.cancel()
    await asyncio.gather(*(s.ws.close() for s in stations), return_exceptions=True)


def _say(out: Any, **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.ocpp.station_fleet",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--stations", type=int, required=True)
    parser.add_argument("--prefix", default="cs")
    parser.add_argument("--meter-interval-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--library-validation", action="store_true",
                        help="validate through the ocpp library's own validators only")
    args = parser.parse_args(argv)
    if args.stations < 1:
        parser.error("--stations: at least 1")
    if args.meter_interval_s <= 0:
        parser.error("--meter-interval-s: must be > 0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with compat.library_validation() if args.library_validation else contextlib.nullcontext():
        asyncio.run(run_fleet(args.url, args.stations, prefix=args.prefix,
                              meter_interval_s=args.meter_interval_s, seed=args.seed,
                              timeout_s=args.timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
