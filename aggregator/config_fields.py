"""Readers for configuration tables that name the dotted field of every bad value.

One implementation for every adapter's configuration; each passes its own ``ModelError``
subclass so callers can tell whose configuration was wrong.
"""

from __future__ import annotations

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
