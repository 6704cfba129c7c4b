"""Workarounds for defects of the ``ocpp`` library (2.1.0), each with a regression test.

- Per-phase keys of OCPP 2.1 (``limit_L2``, ``dischargeLimit_L3``, ...) are mangled to
  ``limitL2`` by the library's snake-to-camel conversion before sending, so any per-phase
  2.1 payload fails the library's own schema check.  ``install()`` wraps that conversion
  to restore the spec's names.  (The other defects are handled where they bite: a 2.1
  action without a handler in ``csms``, unchecked date-times in ``meter.parse_utc``,
  1.6 Decimals in ``Csms.get_composite_schedule``.)
- The library validates every message against its JSON schema in the default thread pool
  (``ASYNC_VALIDATION``).  Under the GIL that buys no parallelism and costs a thread hop
  per message: dispatching to 400 stations took 3.4 s with it and 2.1 s validating on the
  loop (``gridflex bench e2e``), so ``install()`` turns it off; every message is still
  validated.
"""

from __future__ import annotations

import re
from typing import Any

import ocpp.charge_point
import ocpp.messages

_PHASE_SUFFIXES = ("L2", "L3")  # a cheap test before the pattern (every key passes here)
_PER_PHASE = re.compile(r"^(limit|dischargeLimit|setpoint|setpointReactive)(L[23])$")


def restore_per_phase_keys(data: Any) -> Any:
    """``limitL2`` -> ``limit_L2`` (and the other per-phase fields), recursively."""
    if isinstance(data, dict):
        return {_PER_PHASE.sub(r"\1_\2", key) if isinstance(key, str) and key.endswith(
                    _PHASE_SUFFIXES) else key: restore_per_phase_keys(value)
                for key, value in data.items()}
    if isinstance(data, list):
        return [restore_per_phase_keys(item) for item in data]
    return data


def install() -> None:
    """Wrap ocpp's outgoing key conversion once (idempotent), and validate messages on the
    event loop rather than in a thread (see the module docstring)."""
    ocpp.messages.ASYNC_VALIDATION = False
    convert = ocpp.charge_point.snake_to_camel_case
    if getattr(convert, "_gridflex_per_phase", False):
        return

    def snake_to_camel_case(data: Any) -> Any:
        return restore_per_phase_keys(convert(data))

    snake_to_camel_case._gridflex_per_phase = True  # type: ignore[attr-defined]
    ocpp.charge_point.snake_to_camel_case = snake_to_camel_case
