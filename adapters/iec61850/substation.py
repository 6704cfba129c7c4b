"""A demo substation: an IEC 61850-90-8 IED on the ``iec61850`` package's server (MIT/Apache).

Run as its own process (the server is native code; 0.14 can abort at interpreter exit)::

    python -m adapters.iec61850.substation [--host 127.0.0.1] [--port 0] [--limit-w 11000]

It prints ``{"ready": PORT}`` once it listens, then reads JSON commands on stdin, one a
line, and answers each with one JSON line on stdout:

``{"set_limit_w": 30000, "t": "2026-11-22T17:00:00Z"}``
    Set ``DESE1.ChaPwrLim.setMag.f`` (W).  ``t`` (optional, ISO 8601 with an offset) is
    when the limit was set on the caller's clock (a demo on an accelerated clock passes
    its simulated time).  Answer: ``{"ok": true, "limit_w": 30000.0, "t": "...",
    "t_served": false, "applied_mono": M}`` (``applied_mono``: ``time.monotonic()`` once
    the value is in the model).  Anything invalid: ``{"ok": false, "error": "..."}``.
``{"get": "limit_w" | "target_w" | "soc" | "energy_requested_wh" | "departure"}``
    The value in the model (``{"ok": true, "value": V}``).

Writes by clients (gridflex's ``publish_state``) are accepted and printed on their own line
as ``{"write": "EVSE1/DESE1.ChaPwrTgt.setVal", "value": 7400.0}``.  When stdin closes
the server stops and the process exits with 0.

The model (IED ``SUBST``, logical device ``EVSE1``, so MMS domain ``SUBSTEVSE1``):
``DESE1.ChaPwrLim`` (``setMag.f`` [SP] in W, ``units`` [CF]: SIUnit 62 = W, multiplier
0, ``q`` and ``t`` [ST]), ``DESE1.ChaPwrTgt.setVal`` and ``DESE1.ChaPwrRtg.setMag.f``
[SP], ``DEEV1.Soc.setVal``, ``DEEV1.EnAmnt.setVal`` (Float32) and ``DEEV1.DptTm.setVal``
(Int32, seconds since 1970) [SP].  The writable settings are flat ``setVal`` attributes:
this server answers writes into a constructed DA (``setMag.f``) with
ObjectAccessUnsupported.

Limits of ``iec61850`` 0.14 this model lives with (measured):

- ``ChaPwrLim.t`` cannot be set: the server has no update for UtcTime (every
  ``update_*`` is refused as a type mismatch), a client write to FC ST is denied, and an
  ``on_read`` callback can only answer an 8-byte value as an OctetString (a type lie).
  ``t`` stays unset (all zero) and the ``t`` of a command is not served.  Configure the
  adapter without ``limit.time`` (``ied_config`` does): it then takes the value without
  a timestamp check, stamps the constraint with its own clock (inject the demo's
  simulated clock as ``IedAdapter(clock=...)``) and says ``t=none`` in the provenance.
  With ``limit.time`` configured every reading is rejected ("timestamp not set").
- ``ChaPwrLim.q`` cannot be changed either (no update for Quality): it stays good.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import iec61850

from adapters.iec61850.config import IedConfig, ied_from_mapping

IED = "SUBST"
LD = "EVSE1"
DOMAIN = IED + LD
LIMIT = f"{LD}/DESE1.ChaPwrLim.setMag.f"
TARGET = f"{LD}/DESE1.ChaPwrTgt.setVal"
RATING = f"{LD}/DESE1.ChaPwrRtg.setMag.f"
WRITABLE = {
    "target_w": TARGET,
    "soc": f"{LD}/DEEV1.Soc.setVal",
    "energy_requested_wh": f"{LD}/DEEV1.EnAmnt.setVal",
    "departure": f"{LD}/DEEV1.DptTm.setVal",
}
SI_UNIT_WATT = 62
DEFAULT_LIMIT_W = 11000.0
MAX_LIMIT_W = 1e9
START_TIMEOUT_S = 15.0


def model_spec(limit_w: float = DEFAULT_LIMIT_W, rating_w: float = 22000.0) -> dict[str, Any]:
    """The substation's model as an ``IedServer.from_model_spec`` dict."""
    def float32(value: float) -> dict[str, Any]:
        return {"type": "float32", "value": value}

    def setval(name: str, typ: str = "Float32") -> dict[str, Any]:
        return {"name": name, "das": [{"name": "setVal", "fc": "SP", "type": typ}]}

    def setmag(value: float) -> dict[str, Any]:
        return {"name": "setMag", "fc": "SP", "children": [
            {"name": "f", "fc": "SP", "type": "Float32", "value": float32(value)}]}

    units = {"name": "units", "fc": "CF", "children": [
        {"name": "SIUnit", "fc": "CF", "type": "Enumerated",
         "value": {"type": "int", "value": SI_UNIT_WATT}},
        {"name": "multiplier", "fc": "CF", "type": "Enumerated",
         "value": {"type": "int", "value": 0}}]}
    return {"ied_name": IED, "lds": [{"inst": LD, "lns": [
        {"lln0": True, "dos": [{"name": "Mod", "das": [
            {"name": "stVal", "fc": "ST", "type": "Enumerated",
             "value": {"type": "int", "value": 1}}]}]},
        {"class": "DESE", "prefix": "", "inst": "1", "dos": [
            {"name": "ChaPwrLim",
             "das": [{"name": "q", "fc": "ST", "type": "Quality"},
                     {"name": "t", "fc": "ST", "type": "Timestamp"}],
             "constructed_das": [setmag(limit_w), units]},
            setval("ChaPwrTgt"),
            {"name": "ChaPwrRtg", "das": [], "constructed_das": [setmag(rating_w), units]}]},
        {"class": "DEEV", "prefix": "", "inst": "1", "dos": [
            setval("Soc"), setval("EnAmnt"), setval("DptTm", "Int32")]},
    ]}]}


def ied_config(port: int, *, name: str = "substation", node_id: str = "substation",
               host: str = "127.0.0.1", **overrides: Any) -> IedConfig:
    """The adapter configuration for this substation (polling; no ``limit.time``)."""
    data: dict[str, Any] = {
        "name": name, "host": host, "port": port, "domain": DOMAIN, "node_id": node_id,
        "limit": {"value": "DESE1.ChaPwrLim.setMag.f[SP]",
                  "quality": "DESE1.ChaPwrLim.q[ST]"},
        "publish": {"soc": "DEEV1.Soc.setVal[SP]", "departure": "DEEV1.DptTm.setVal[SP]",
                    "energy_requested": "DEEV1.EnAmnt.setVal[SP]",
                    "power_target": "DESE1.ChaPwrTgt.setVal[SP]"}}
    data.update(overrides)
    return ied_from_mapping(data)


def parse_time(value: Any) -> datetime:
    """``t`` of a command: ISO 8601 with an offset (``Z`` allowed), as UTC."""
    if not isinstance(value, str):
        raise ValueError(f"t: expected an ISO 8601 string, got {value!r}")
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"t: not ISO 8601: {value!r}") from None
    if stamp.utcoffset() is None:
        raise ValueError(f"t: needs a UTC offset: {value!r}")
    return stamp.astimezone(UTC)


def _limit_w(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"set_limit_w: expected a number of W, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= MAX_LIMIT_W:
        raise ValueError(f"set_limit_w: expected 0..{MAX_LIMIT_W:g} W, got {value!r}")
    return number


class _Model:
    """The values this process put into (or accepted into) the server's model."""

    def __init__(self, server: iec61850.IedServer, limit_w: float) -> None:
        self.server = server
        self.values: dict[str, Any] = {"limit_w": limit_w, "target_w": 0.0, "soc": 0.0,
                                       "energy_requested_wh": 0.0, "departure": 0}
        self.t: datetime | None = None
        self._out = threading.Lock()

    def emit(self, line: Mapping[str, Any]) -> None:
        with self._out:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    def on_write(self, key: str) -> Any:
        def accept(path: str, value: Any) -> bool:
            self.values[key] = value
            self.emit({"write": path, "value": value})
            return True
        return accept

    def apply(self, command: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(command) - {"set_limit_w", "t", "get"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        if "get" in command:
            key = command["get"]
            if key not in self.values:
                raise ValueError(f"get: one of {', '.join(sorted(self.values))}")
            return {"ok": True, "value": self.values[key]}
        if "set_limit_w" not in command:
            raise ValueError("expected 'set_limit_w' or 'get'")
        limit_w = _limit_w(command["set_limit_w"])
        stamp = parse_time(command["t"]) if command.get("t") is not None else None
        self.server.update_float32(LIMIT, limit_w)
        applied = time.monotonic()
        self.values["limit_w"] = limit_w
        self.t = stamp
        return {"ok": True, "limit_w": limit_w,
                "t": None if stamp is None else stamp.isoformat(),
                "t_served": False,  # iec61850 0.14 cannot set a UtcTime (module docs)
                "applied_mono": applied}


async def serve(host: str, port: int, limit_w: float) -> None:
    """Run the substation until stdin closes."""
    server = iec61850.IedServer.from_model_spec(model_spec(limit_w))
    server.bind(f"{host}:{port}")
    model = _Model(server, limit_w)
    for key, path in WRITABLE.items():
        server.on_write(path, model.on_write(key))
    loop = asyncio.get_running_loop()
    async with server:
        server.update_float32(LIMIT, limit_w)
        bound = int(server.bound_addr.rsplit(":", 1)[1])
        model.emit({"ready": bound})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if not isinstance(command, dict):
                    raise ValueError("expected a JSON object")
                reply = model.apply(command)
            except Exception as exc:  # answer every bad command, keep serving
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            model.emit(reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adapters.iec61850.substation",
                                     description="a 90-8 demo substation (iec61850 server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--limit-w", type=float, default=DEFAULT_LIMIT_W,
                        help="initial DESE1.ChaPwrLim in W")
    args = parser.parse_args(argv)
    code = 0
    try:
        asyncio.run(serve(args.host, args.port, _limit_w(args.limit_w)))
    except Exception as exc:
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        code = 1
    sys.stdout.flush()
    os._exit(code)  # iec61850 0.14 can abort at interpreter exit


# -- the handle -----------------------------------------------------------------------------
class SubstationError(RuntimeError):
    """The substation did not start, refused a command, or ended."""


class Substation:
    """Starts the substation process, sends it commands, stops it (asyncio).

    ``writes`` receives what clients wrote (``{"write": path, "value": v}``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 limit_w: float = DEFAULT_LIMIT_W, python: str = sys.executable,
                 timeout_s: float = START_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.limit_w = limit_w
        self.python = python
        self.timeout_s = timeout_s
        self.writes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._proc: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Substation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> int:
        """Start the process and return the port it listens on."""
        if self._proc is not None:
            raise SubstationError("already started")
        root = str(Path(__file__).resolve().parents[2])  # importable without an install
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "adapters.iec61850.substation", "--host", self.host,
            "--port", str(self.port), "--limit-w", repr(float(self.limit_w)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        self._reader = asyncio.create_task(self._read(self._proc))
        first = await self._reply()
        if "ready" not in first:
            await self.stop()
            raise SubstationError(f"the substation did not start: {first}")
        self.port = int(first["ready"])
        return self.port

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = {"noise": line.decode(errors="replace").rstrip()}
            (self.writes if "write" in item else self._replies).put_nowait(item)
        self._replies.put_nowait({"eof": await proc.wait()})

    async def _reply(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._replies.get(), self.timeout_s)
        except TimeoutError:
            raise SubstationError(f"no answer for {self.timeout_s:g} s") from None

    async def command(self, **command: Any) -> dict[str, Any]:
        """Send one command and return its answer (``SubstationError`` if refused)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise SubstationError("not running")
        async with self._lock:
            try:
                proc.stdin.write((json.dumps(command) + "\n").encode())
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise SubstationError(f"the substation is gone: {exc}") from exc
            reply = await self._reply()
        if not reply.get("ok"):
            raise SubstationError(f"{command}: {reply.get('error', reply)}")
        return reply

    async def set_limit(self, limit_w: float, at: datetime | None = None) -> dict[str, Any]:
        """Set ChaPwrLim to ``limit_w`` W, set at ``at`` (tz-aware; see the module docs)."""
        if at is not None and at.utcoffset() is None:
            raise ValueError("at must be timezone-aware")
        return await self.command(set_limit_w=limit_w,
                                  t=None if at is None else at.astimezone(UTC).isoformat())

    async def get(self, key: str) -> Any:
        """A value of the model (``limit_w``, ``target_w``, ``soc``, ...)."""
        return (await self.command(get=key))["value"]

    def ied_config(self, **kwargs: Any) -> IedConfig:
        """The adapter configuration for this running substation (see ``ied_config``)."""
        return ied_config(self.port, host=self.host, **kwargs)

    async def stop(self) -> int | None:
        """Close stdin (the substation exits cleanly), kill it if it lingers; exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
        try:
            code = await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader = None
        return code


if __name__ == "__main__":
    main()
