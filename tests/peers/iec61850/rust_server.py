"""An ``iec61850``-package (Rust) IED that rejects some writes, run as its own process.

Prints ``{"ready": PORT}`` and serves until stdin closes.  The model (IED ``RX``, LD
``EVSE1``, MMS domain ``RXEVSE1``): DESE1.ChaPwrLim (setMag.f, q, t), DESE1.ChaPwrTgt.setVal
(rejects > 22 kW with ObjectValueInvalid), DEEV1.Soc.setVal (always ObjectAccessDenied),
DEEV1.DptTm.setVal and DEEV1.EnAmnt.setVal (accepted).  The settings are flat ``setVal``
attributes because this server answers writes into a constructed DA (``setMag.f``) with
ObjectAccessUnsupported (iec61850 0.14).  Every accepted write is echoed on stdout
as ``{"write": PATH, "value": V}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import iec61850


def spec() -> dict[str, Any]:
    """The model as an ``IedServer.from_model_spec`` dict."""
    def do(name: str, das: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "das": das}

    def setval_do(name: str) -> dict[str, Any]:
        # flat: this server refuses writes into constructed DAs (setMag.f) with
        # ObjectAccessUnsupported, so the writable settings are plain Float32 setVal
        return do(name, [{"name": "setVal", "fc": "SP", "type": "Float32"}])

    return {"ied_name": "RX", "lds": [{"inst": "EVSE1", "lns": [
        {"lln0": True, "dos": [do("Mod", [{"name": "stVal", "fc": "ST", "type": "Enumerated",
                                           "value": {"type": "int", "value": 1}}])]},
        {"class": "DESE", "prefix": "", "inst": "1", "dos": [
            {"name": "ChaPwrLim", "das": [
                {"name": "q", "fc": "ST", "type": "Quality"},
                {"name": "t", "fc": "ST", "type": "Timestamp"}],
             "constructed_das": [{"name": "setMag", "fc": "SP", "children": [
                 {"name": "f", "fc": "SP", "type": "Float32",
                  "value": {"type": "float32", "value": 11000.0}}]}]},
            setval_do("ChaPwrTgt")]},
        {"class": "DEEV", "prefix": "", "inst": "1", "dos": [
            setval_do("Soc"), setval_do("EnAmnt"),
            do("DptTm", [{"name": "setVal", "fc": "SP", "type": "Int32"}])]},
    ]}]}


def _rejecting(code: str, limit: float | None) -> Any:
    def on_write(path: str, value: Any) -> bool:
        if limit is None or float(value) > limit:
            err = iec61850.IedDataAccessError(f"{path}: {value!r} refused")
            err.code = code  # type: ignore[attr-defined]
            raise err
        print(json.dumps({"write": path, "value": value}), flush=True)
        return True
    return on_write


def _echo(path: str, value: Any) -> bool:
    print(json.dumps({"write": path, "value": value}), flush=True)
    return True


async def main() -> None:
    server = iec61850.IedServer.from_model_spec(spec())
    server.bind("127.0.0.1:0")
    server.on_write("EVSE1/DESE1.ChaPwrTgt.setVal", _rejecting("ObjectValueInvalid", 22000.0))
    server.on_write("EVSE1/DEEV1.Soc.setVal", _rejecting("ObjectAccessDenied", None))
    server.on_write("EVSE1/DEEV1.EnAmnt.setVal", _echo)
    server.on_write("EVSE1/DEEV1.DptTm.setVal", _echo)
    async with server:
        server.update_float32("EVSE1/DESE1.ChaPwrLim.setMag.f", 11000.0)
        port = int(server.bound_addr.rsplit(":", 1)[1])
        print(json.dumps({"ready": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    sys.stdout.flush()
    os._exit(0)  # iec61850 0.14 can abort at interpreter exit


if __name__ == "__main__":
    asyncio.run(main())
