"""Readers for configuration tables that name the dotted field of every bad value.

One implementation for every adapter's configuration; each passes its own ``ModelError``
subclass so callers can tell whose configuration was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.model import ModelError


@dataclass(frozen=True, slots=True)
class FieldReader:
    """Typed reads from a mapping; a bad value raises ``error`` naming ``where.key``."""

    error: type[ModelError] = ModelError

    def table(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(where, "must be a table")
        return value

    def no_unknown(self, table: Mapping[str, Any], known: Iterable[str], where: str) -> None:
        allowed = sorted(known)
        for key in table:
            if key not in allowed:
                raise self.error(f"{where}.{key}", f"unknown key (known: {allowed})")

    def text(self, table: Mapping[str, Any], key: str, where: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{where}.{key}", "required, a non-empty string")
        return value

    def path(self, table: Mapping[str, Any], key: str, where: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(f"{where}.{key}", "must be a file path")
        return Path(value)

    def flag(self, table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{where}.{key}", "must be true or false")
        return value

    def number(self, table: Mapping[str, Any], key: str, where: str, default: float | None,
               *, minimum: float | None = None, maximum: float | None = None) -> float:
        """A finite number in [minimum, maximum]; ``default`` None makes it required."""
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise self.error(f"{where}.{key}", f"{'required, ' if default is None else ''}"
                                               f"a finite number, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(f"{where}.{key}", f"must be in [{minimum}, {maximum}], got {value!r}")
        return float(value)

    def integer(self, table: Mapping[str, Any], key: str, where: str, default: int | None,
                *, minimum: int = 0, maximum: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
                maximum is not None and value > maximum):
            raise self.error(f"{where}.{key}", f"must be an integer in [{minimum}, {maximum}], "
                                               f"got {value!r}")
        return value

    def items(self, table: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
        """An array of tables (``[[key]]``), each checked to be a table; [] when absent."""
        value = table.get(key, [])
        if not isinstance(value, list):
            raise self.error(f"{where}.{key}", "must be an array of tables")
        return [self.table(item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
