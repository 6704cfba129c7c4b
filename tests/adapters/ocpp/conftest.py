"""Real ``ocpp``-library charge points (1.6, 2.0.1, 2.1) that connect to gridflex's CSMS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as r16
from ocpp.v21 import ChargePoint as Cp21
from ocpp.v21 import call_result as r21
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as r201
from websockets.asyncio.client import connect


def _refuses(mode: str, periods: list[dict[str, Any]]) -> bool:
    """A "reject" station refuses every profile that is not all zero."""
    return mode == "reject" and any(float(p.get("limit", 0)) != 0 or float(
        p.get("setpoint", 0)) != 0 for p in periods)


def _as_applied(mode: str, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    """The periods the station will really use: an "ignore" station stays at 32 A."""
    if mode == "ignore":
        return [{"start_period": 0, "limit": 32.0}]
    periods: list[dict[str, Any]] = schedule["charging_schedule_period"]
    return periods


class Station16(Cp16):  # type: ignore[misc]
    """A 1.6 charge point that accepts profiles and reports them back.

    ``received_at`` logs when each SetChargingProfile arrived (monotonic s);
    ``answer_delay_s`` makes the station slow to answer one.
    """

    profiles: list[dict[str, Any]]
    received_at: list[float]
    mode = "follow"
    answer_delay_s = 0.0

    @on("SetChargingProfile")
    async def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.received_at.append(time.monotonic())
        await asyncio.sleep(self.answer_delay_s)
        # ocpp's 1.6 module hands numbers over as Decimal, which it cannot send back
        profile = json.loads(json.dumps(cs_charging_profiles, default=float))
        if _refuses(self.mode, profile["charging_schedule"]["charging_schedule_period"]):
            return r16.SetChargingProfile(status="Rejected")
        self.profiles.append(profile)
        return r16.SetChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def on_composite(self, connector_id: int, duration: int, **_: Any) -> Any:
        schedule = dict(self.profiles[-1]["charging_schedule"])
        schedule["charging_schedule_period"] = _as_applied(self.mode, schedule)
        return r16.GetCompositeSchedule(status="Accepted", connector_id=connector_id,
                                        charging_schedule=schedule)

    @on("ClearChargingProfile")
    def on_clear(self, **_: Any) -> Any:
        self.profiles.clear()
        return r16.ClearChargingProfile(status="Accepted")


def _station2x(base: type, results: Any) -> type:
    class Station(base):  # type: ignore[misc, valid-type]
        profiles: list[dict[str, Any]]
        received_at: list[float]
        mode = "follow"
        answer_delay_s = 0.0

        @on("SetChargingProfile")
        async def on_set(self, evse_id: int, charging_profile: dict[str, Any],
                         **_: Any) -> Any:
            self.received_at.append(time.monotonic())
            await asyncio.sleep(self.answer_delay_s)
            periods = charging_profile["charging_schedule"][0]["charging_schedule_period"]
            if _refuses(self.mode, periods):
                return results.SetChargingProfile(status="Rejected")
            self.profiles.append(charging_profile)
            return results.SetChargingProfile(status="Accepted")

        @on("GetCompositeSchedule")
        def on_composite(self, duration: int, evse_id: int, **_: Any) -> Any:
            schedule = self.profiles[-1]["charging_schedule"][0]
            return results.GetCompositeSchedule(status="Accepted", schedule={
                "evse_id": evse_id, "duration": duration,
                "schedule_start": schedule["start_schedule"],
                "charging_rate_unit": schedule["charging_rate_unit"],
                "charging_schedule_period": _as_applied(self.mode, schedule)})

        @on("ClearChargingProfile")
        def on_clear(self, **_: Any) -> Any:
            self.profiles.clear()
            return results.ClearChargingProfile(status="Accepted")

    return Station


Station201 = _station2x(Cp201, r201)
Station21 = _station2x(Cp21, r21)
CLASSES = {"ocpp1.6": Station16, "ocpp2.0.1": Station201, "ocpp2.1": Station21}


def basic(station_id: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def station(url: str, station_id: str, subprotocol: str, *, password: str | None = None,
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    """A connected, running charge point of the given OCPP version."""
    headers = basic(station_id, password) if password is not None else None
    async with connect(f"{url}/{station_id}", subprotocols=[subprotocol],  # type: ignore[list-item]
                       additional_headers=headers, ssl=ssl_context) as ws:
        cp = CLASSES[subprotocol](station_id, ws, response_timeout=5)
        cp.profiles = []
        cp.received_at = []
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pki(folder: Path, station_id: str) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate named station_id."""
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    start = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("gridflex test CA"))
          .issuer_name(name("gridflex test CA")).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(start).not_valid_after(start + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths: dict[str, Path] = {}

    def issue(label: str, common: str, server: bool) -> None:
        leaf_key = key()
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
                   .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + timedelta(days=1)))
        if server:
            import ipaddress
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{label}_cert"] = folder / f"{label}.pem"
        paths[f"{label}_key"] = folder / f"{label}.key"
        paths[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}_key"].write_bytes(leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    paths["ca"] = folder / "ca.pem"
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issue("server", "127.0.0.1", server=True)
    issue("client", station_id, server=False)
    issue("stranger", "someone-else", server=False)
    return paths
