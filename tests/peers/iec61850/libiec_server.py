"""A libiec61850 (pyiec61850-ng, GPL: test-only) IED with a 90-8 e-mobility model.

Run as its own process (a native crash must not take pytest down)::

    python libiec_server.py [--port N] [--entries 8] [--intg-ms 500]

It prints one JSON line ``{"ready": PORT}`` and then serves JSON commands on stdin, one
per line, answering each with one JSON line on stdout:

``{"op": "float"|"int"|"string", "ref": R, "value": V}``, ``{"op": "time", "ref": R,
"ms": T, "clock_failure": false}``, ``{"op": "quality", "ref": R, "bits": Q}``,
``{"op": "batch", "items": [...]}`` (one model lock: one report), ``{"op": "get_float" |
"get_int" | "get_time", "ref": R}``, ``{"op": "exit"}``.

The model (IED ``GW``, logical device ``EVSE1``, so MMS domain ``GWEVSE1``):
DESE1 (ChaPwrLim with setMag.f/units/q/t, ChaPwrTgt, ChaPwrRtg), DEEV1 (Soc, DptTm,
EnAmnt, writable settings), FSCH1/FSCH2 (SchdSt, SchdPrio, NumEntr, SchdIntv, StrTm,
ValASG1..n), FSCC1 (ActSchdRef), and in LLN0 the data sets ``Limits`` and ``Schedules``
with unbuffered report control blocks ``urcbLimits01`` (RptID ``Limits``) /
``urcbSchedules01`` (``Schedules``) and the buffered ``brcbLimits01`` (``LimitsB``) on
``Limits``.  A ``batch`` answer carries ``"applied_mono"``: ``time.monotonic()`` when the
model lock was released (one clock for every process on the host, for latency benches).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import time
from typing import Any

import pyiec61850.pyiec61850 as lib  # type: ignore[import-untyped]

IED = "GW"
LD = "EVSE1"
DOMAIN = IED + LD

T_BOOL, T_INT32, T_FLOAT32, T_ENUM = lib.IEC61850_BOOLEAN, lib.IEC61850_INT32, \
    lib.IEC61850_FLOAT32, lib.IEC61850_ENUMERATED
T_VS129, T_TIME, T_QUALITY, T_STRUCT = lib.IEC61850_VISIBLE_STRING_129, \
    lib.IEC61850_TIMESTAMP, lib.IEC61850_QUALITY, lib.IEC61850_CONSTRUCTED
FC_ST, FC_SP, FC_CF, FC_DC = lib.IEC61850_FC_ST, lib.IEC61850_FC_SP, lib.IEC61850_FC_CF, \
    lib.IEC61850_FC_DC
DCHG, QCHG, DUPD = lib.TRG_OPT_DATA_CHANGED, lib.TRG_OPT_QUALITY_CHANGED, \
    lib.TRG_OPT_DATA_UPDATE


def _da(name: str, typ: int, fc: int, trg: int = 0) -> str:
    return f"DA({name} 0 {typ} {fc} {trg} 0);"


def _setmag(fc: int = FC_SP) -> str:
    return f"DA(setMag 0 {T_STRUCT} {fc} {DCHG} 0){{{_da('f', T_FLOAT32, fc, DCHG)}}}"


def _units() -> str:
    return (f"DA(units 0 {T_STRUCT} {FC_CF} {DCHG} 0){{{_da('SIUnit', T_ENUM, FC_CF, DCHG)}"
            f"{_da('multiplier', T_ENUM, FC_CF, DCHG)}}}")


def _status(value_da: str) -> str:
    return value_da + _da("q", T_QUALITY, FC_ST, QCHG) + _da("t", T_TIME, FC_ST)


def model_text(entries: int, intg_ms: int) -> str:
    """The libiec61850 config-file text of the 90-8 model."""
    fsch_names = ("FSCH1", "FSCH2")
    schedule_des = []
    for fsch in fsch_names:
        schedule_des += [f"{fsch}$ST$SchdSt$stVal", f"{fsch}$ST$SchdSt$q",
                         f"{fsch}$SP$SchdPrio$setVal", f"{fsch}$SP$NumEntr$setVal",
                         f"{fsch}$SP$SchdIntv$setVal", f"{fsch}$SP$StrTm$setTm"]
        schedule_des += [f"{fsch}$SP$ValASG{i}$setMag$f" for i in range(1, entries + 1)]
    schedule_des.append("FSCC1$ST$ActSchdRef$stVal")
    trg = lib.TRG_OPT_DATA_CHANGED | lib.TRG_OPT_QUALITY_CHANGED | \
        lib.TRG_OPT_INTEGRITY | lib.TRG_OPT_GI
    opts = lib.RPT_OPT_SEQ_NUM | lib.RPT_OPT_TIME_STAMP | lib.RPT_OPT_REASON_FOR_INCLUSION | \
        lib.RPT_OPT_DATA_SET | lib.RPT_OPT_CONF_REV
    lln0 = (
        "LN(LLN0){"
        f"DO(Mod 0){{{_status(_da('stVal', T_ENUM, FC_ST, DCHG))}}}"
        "DS(Limits){DE(DESE1$SP$ChaPwrLim$setMag$f);DE(DESE1$ST$ChaPwrLim$q);"
        "DE(DESE1$ST$ChaPwrLim$t);}"
        "DS(Schedules){" + "".join(f"DE({d});" for d in schedule_des) + "}"
        f"RC(urcbLimits01 Limits 0 Limits 1 {trg} {opts} 0 {intg_ms});"
        f"RC(urcbSchedules01 Schedules 0 Schedules 1 {trg} {opts} 0 {intg_ms});"
        f"RC(brcbLimits01 LimitsB 1 Limits 1 {trg} "
        f"{opts | lib.RPT_OPT_ENTRY_ID | lib.RPT_OPT_BUFFER_OVERFLOW} 0 {intg_ms});"
        "}")
    dese = ("LN(DESE1){"
            f"DO(ChaPwrLim 0){{{_setmag()}{_units()}{_da('q', T_QUALITY, FC_ST, QCHG)}"
            f"{_da('t', T_TIME, FC_ST)}}}"
            f"DO(ChaPwrTgt 0){{{_setmag()}{_units()}}}"
            f"DO(ChaPwrRtg 0){{{_setmag()}{_units()}}}"
            "}")
    deev = ("LN(DEEV1){"
            f"DO(Soc 0){{{_setmag()}}}"
            f"DO(DptTm 0){{{_da('setVal', T_INT32, FC_SP, DCHG)}}}"
            f"DO(EnAmnt 0){{{_setmag()}}}"
            f"DO(EVId 0){{{_da('setVal', T_VS129, FC_SP, DCHG)}}}"
            "}")
    fschs = ""
    for fsch in fsch_names:
        values = "".join(f"DO(ValASG{i} 0){{{_setmag()}}}" for i in range(1, entries + 1))
        fschs += (f"LN({fsch}){{"
                  f"DO(SchdSt 0){{{_status(_da('stVal', T_ENUM, FC_ST, DCHG))}}}"
                  f"DO(SchdPrio 0){{{_da('setVal', T_INT32, FC_SP, DCHG)}}}"
                  f"DO(NumEntr 0){{{_da('setVal', T_INT32, FC_SP, DCHG)}}}"
                  f"DO(SchdIntv 0){{{_da('setVal', T_INT32, FC_SP, DCHG)}}}"
                  f"DO(StrTm 0){{{_da('setTm', T_TIME, FC_SP, DCHG)}}}"
                  f"{values}}}")
    fscc = ("LN(FSCC1){"
            f"DO(ActSchdRef 0){{{_status(_da('stVal', T_VS129, FC_ST, DCHG))}}}"
            "}")
    text = f"MODEL({IED}){{LD({LD}){{{lln0}{dese}{deev}{fschs}{fscc}}}}}"
    return re.sub(r"([{;}])", "\\1\n", text)  # the parser reads one statement a line


class Server:
    """The running libiec61850 server and the commands that change its values."""

    def __init__(self, entries: int, intg_ms: int) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as handle:
            handle.write(model_text(entries, intg_ms))
            path = handle.name
        try:
            self.model = lib.ConfigFileParser_createModelFromConfigFileEx(path)
        finally:
            os.unlink(path)
        if not self.model:
            raise RuntimeError("libiec61850 rejected the model file")
        self.server = lib.IedServer_create(self.model)

    def start(self, port: int) -> int:
        if port == 0:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
        lib.IedServer_setLocalIpAddress(self.server, "127.0.0.1")
        lib.IedServer_start(self.server, port)
        if not lib.IedServer_isRunning(self.server):
            raise RuntimeError(f"libiec61850 server did not start on port {port}")
        return port

    def _attr(self, ref: str) -> Any:
        node = lib.IedModel_getModelNodeByObjectReference(self.model, f"{DOMAIN}/{ref}")
        if not node:
            raise KeyError(ref)
        return lib.toDataAttribute(node)

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "batch":
            lib.IedServer_lockDataModel(self.server)
            try:
                for item in cmd["items"]:
                    self._update(item)
            finally:
                lib.IedServer_unlockDataModel(self.server)
            return {"ok": True, "applied_mono": time.monotonic()}
        if op == "get_float":
            return {"ok": True, "value": lib.IedServer_getFloatAttributeValue(
                self.server, self._attr(cmd["ref"]))}
        if op == "get_int":
            return {"ok": True, "value": lib.IedServer_getInt32AttributeValue(
                self.server, self._attr(cmd["ref"]))}
        if op == "get_time":
            return {"ok": True, "value": lib.IedServer_getUTCTimeAttributeValue(
                self.server, self._attr(cmd["ref"]))}
        if op == "connections":
            return {"ok": True, "value": lib.IedServer_getNumberOfOpenConnections(self.server)}
        lib.IedServer_lockDataModel(self.server)
        try:
            self._update(cmd)
        finally:
            lib.IedServer_unlockDataModel(self.server)
        return {"ok": True}

    def _update(self, cmd: dict[str, Any]) -> None:
        op, attr = cmd["op"], self._attr(cmd["ref"])
        if op == "float":
            lib.IedServer_updateFloatAttributeValue(self.server, attr, float(cmd["value"]))
        elif op == "int":
            lib.IedServer_updateInt32AttributeValue(self.server, attr, int(cmd["value"]))
        elif op == "string":
            lib.IedServer_updateVisibleStringAttributeValue(self.server, attr, cmd["value"])
        elif op == "quality":
            lib.IedServer_updateQuality(self.server, attr, int(cmd["bits"]))
        elif op == "time":
            stamp = lib.Timestamp_create()
            lib.Timestamp_clearFlags(stamp)
            lib.Timestamp_setTimeInMilliseconds(stamp, int(cmd["ms"]))
            if cmd.get("clock_failure"):
                lib.Timestamp_setClockFailure(stamp, True)
            lib.IedServer_updateTimestampAttributeValue(self.server, attr, stamp)
            lib.Timestamp_destroy(stamp)
        else:
            raise ValueError(f"unknown op {op!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--intg-ms", type=int, default=500)
    args = parser.parse_args()
    server = Server(args.entries, args.intg_ms)
    port = server.start(args.port)
    print(json.dumps({"ready": port}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if cmd.get("op") == "exit":
                break
            reply = server.apply(cmd)
        except Exception as exc:  # report every failure to the test, keep serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    # libiec61850 teardown with live connections is not worth the risk: leave at once
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
