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
- Validation itself (jsonschema, interpreted) was about half of the CSMS's work in a
  fan-out to 1,000 stations (``gridflex bench ocpp``).  ``install()`` puts a compiled
  check (fastjsonschema, the same schema files) in front: what it passes is valid, and
  anything it refuses goes through the library's own validator, so every error and the
  OCPP error it becomes stay the library's.  ``library_validation()`` undoes this for a
  while (the bench's comparison).
- The library turns every incoming key from camelCase with two regexes per key, every
  message; ``install()`` memoizes that per key (same result, key by key).
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import ocpp.charge_point
import ocpp.messages

log = logging.getLogger("gridflex.ocpp")

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


def _floats(data: Any) -> Any:
    """``data`` with Decimals as floats (the library parses 1.6 payloads as Decimal)."""
    if isinstance(data, dict):
        return {key: _floats(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_floats(value) for value in data]
    return float(data) if isinstance(data, decimal.Decimal) else data


class CompiledValidator:
    """The library's validator for one schema with a compiled fast path: what the compiled
    check passes is valid; anything else goes through the library's own validator."""

    def __init__(self, validator: Any, decimals: bool) -> None:
        import fastjsonschema

        self.validator = validator
        self.schema = validator.schema
        self._decimal = decimals  # payloads arrive with Decimals: check them as floats
        try:
            self._check: Callable[[Any], Any] | None = fastjsonschema.compile(
                _floats(validator.schema))
        except Exception as err:  # a schema it cannot compile: the library alone checks
            log.warning("ocpp: schema %s not compiled (%s); validated by the library only",
                        validator.schema.get("$id", "?"), err)
            self._check = None

    def validate(self, payload: Any) -> None:
        if self._check is not None:
            try:
                self._check(_floats(payload) if self._decimal else payload)
                return
            except Exception:
                pass
        self.validator.validate(payload)


_LIBRARY_GET_VALIDATOR = ocpp.messages.get_validator


def _compiled_get_validator() -> Callable[..., Any]:
    compiled: dict[tuple[Any, ...], CompiledValidator] = {}

    def get_validator(message_type_id: int, action: str, ocpp_version: str,
                      parse_float: Any = float) -> CompiledValidator:
        key = (message_type_id, action, ocpp_version, parse_float)
        if key not in compiled:
            compiled[key] = CompiledValidator(
                _LIBRARY_GET_VALIDATOR(message_type_id, action, ocpp_version, parse_float),
                decimals=parse_float is not float)
        return compiled[key]

    return get_validator


@contextlib.contextmanager
def library_validation() -> Iterator[None]:
    """Within: the ``ocpp`` library's own validators alone (what ``install()`` replaces)."""
    installed = ocpp.messages.get_validator
    ocpp.messages.get_validator = _LIBRARY_GET_VALIDATOR
    try:
        yield
    finally:
        ocpp.messages.get_validator = installed


def _memoized_camel_to_snake() -> Callable[[Any], Any]:
    original = ocpp.charge_point.camel_to_snake_case

    @functools.lru_cache(maxsize=4096)
    def key_of(key: str) -> str:
        return str(next(iter(original({key: None}))))

    def camel_to_snake_case(data: Any) -> Any:
        if isinstance(data, dict):
            return {key_of(key): camel_to_snake_case(value) for key, value in data.items()}
        if isinstance(data, list):
            return [camel_to_snake_case(value) for value in data]
        return data

    return camel_to_snake_case


def install() -> None:
    """Once (idempotent): restore 2.1 per-phase keys on send, validate on the event loop
    through compiled schemas, memoize the incoming key conversion (see above)."""
    ocpp.messages.ASYNC_VALIDATION = False
    if getattr(ocpp.charge_point.snake_to_camel_case, "_gridflex_per_phase", False):
        return
    convert = ocpp.charge_point.snake_to_camel_case

    def snake_to_camel_case(data: Any) -> Any:
        return restore_per_phase_keys(convert(data))

    snake_to_camel_case._gridflex_per_phase = True  # type: ignore[attr-defined]
    ocpp.charge_point.snake_to_camel_case = snake_to_camel_case
    ocpp.charge_point.camel_to_snake_case = _memoized_camel_to_snake()
    ocpp.messages.get_validator = _compiled_get_validator()
