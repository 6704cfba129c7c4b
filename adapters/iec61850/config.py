"""Configuration of the IEC 61850-90-8 adapter: IEDs, object references, units, timeouts.

Public sources disagree on some 90-8 names, so every object reference comes from here.
References are relative to the IED's logical device and carry their functional
constraint in brackets: ``"DESE1.ChaPwrLim.setMag.f[SP]"``.  ``ConfigError`` names the
offending field (``ieds[0].limit.value``).  An IED may name its SCL file (``scl``,
``ied_name``, optional ``access_point``/``ldevice``): see ``scl.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.model import ModelError

FUNCTIONAL_CONSTRAINTS = frozenset({"ST", "MX", "SP", "SV", "CF", "DC", "SG", "SE", "SR",
                                    "OR", "BL", "EX", "CO"})
_REF = re.compile(r"^(?P<path>[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_{}]+)+)\[(?P<fc>[A-Z]{2})\]$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RCB = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\$(RP|BR)\$[A-Za-z0-9_]+$")


class ConfigError(ModelError):
    """A configuration value is invalid; ``field`` names it."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A data attribute reference relative to the logical device, with its FC."""

    path: str
    fc: str

    @classmethod
    def parse(cls, text: str, field_name: str) -> Ref:
        """Parse ``"LN.DO.DA[FC]"``."""
        if not isinstance(text, str):
            raise ConfigError(field_name, f"expected 'LN.DO.DA[FC]', got {text!r}")
        match = _REF.match(text.strip())
        if match is None:
            raise ConfigError(field_name, f"expected 'LN.DO.DA[FC]', got {text!r}")
        if match["fc"] not in FUNCTIONAL_CONSTRAINTS:
            raise ConfigError(field_name, f"unknown functional constraint {match['fc']!r}")
        return cls(match["path"], match["fc"])

    def full(self, domain: str) -> str:
        """The MMS object reference ``DOMAIN/LN.DO.DA``."""
        return f"{domain}/{self.path}"

    def __str__(self) -> str:
        return f"{self.path}[{self.fc}]"


def _opt_ref(value: Any, field_name: str) -> Ref | None:
    return None if value is None else Ref.parse(value, field_name)


def _positive(value: Any, field_name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(float(value)):
        raise ConfigError(field_name, f"expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(field_name, f"must be {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _multiplier(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -24 <= value <= 24:
        raise ConfigError(field_name, "expected the SI multiplier exponent as an integer "
                                      f"(0 = W, 3 = kW), got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """``DESE.ChaPwrLim``: the grid's cap on charging power at this node."""

    value: Ref
    quality: Ref | None
    time: Ref | None
    multiplier: int = 0  # power of ten of the value's unit in W: 0 = W, 3 = kW
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """One FSCH schedule; ``{n}`` in ``value`` is the 1-based entry number."""

    name: str
    state: Ref
    state_quality: Ref | None
    priority: Ref
    entries: Ref
    interval: Ref
    start: Ref
    value: str  # template "FSCH1.ValASG{n}.setMag.f[SP]"
    max_entries: int = 96
    interval_unit_s: float = 1.0
    multiplier: int = 0

    def value_ref(self, number: int) -> Ref:
        """The reference of entry ``number`` (1-based)."""
        return Ref.parse(self.value.replace("{n}", str(number)), f"{self.name}.value")


@dataclass(frozen=True, slots=True)
class ReportConfig:
    """A report control block (``LLN0$RP$urcbLimits01``) and what its data set covers."""

    rcb: str
    covers: tuple[str, ...]  # "limit" and/or "schedules"


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """Where gridflex writes EV state and its planned power back (None: not written)."""

    soc: Ref | None = None               # percent
    departure: Ref | None = None         # INT32 seconds since 1970 (see module docs)
    energy_requested: Ref | None = None  # Wh
    power_target: Ref | None = None      # DESE.ChaPwrTgt, in W x 10^multiplier
    multiplier: int = 0


@dataclass(frozen=True, slots=True)
class IedConfig:
    """One IED or gateway and the grid node it stands for."""

    name: str
    host: str
    port: int
    domain: str
    node_id: str
    limit: LimitConfig | None = None
    schedules: tuple[ScheduleConfig, ...] = ()
    active_schedule: Ref | None = None  # FSCC.ActSchdRef
    reports: tuple[ReportConfig, ...] = ()
    publish: PublishConfig | None = None
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 3.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    integrity_period_s: float = 10.0
    poll_interval_s: float = 30.0
    ttl_s: float = 90.0
    max_age_s: float = 120.0
    max_future_s: float = 5.0
    max_power_kw: float = 1000.0
    accept_unsynchronized_clock: bool = False
    schedule_ttl_s: float | None = None  # None: schedule windows hold until their end

    @property
    def scope_limit(self) -> str:
        return f"{self.name}:{self.limit.value.path}" if self.limit else f"{self.name}:limit"

    @property
    def scope_schedules(self) -> str:
        if self.active_schedule is not None:
            return f"{self.name}:{self.active_schedule.path}"
        return f"{self.name}:" + "+".join(s.name for s in self.schedules)


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """Every IED the adapter talks to."""

    ieds: tuple[IedConfig, ...] = field(default_factory=tuple)


def _get(data: Mapping[str, Any], key: str, default: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a mapping, got {type(data).__name__}")
    return data.get(key, default)


def _known(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", "unknown field")


def _limit(data: Mapping[str, Any], prefix: str) -> LimitConfig:
    _known(data, {"value", "quality", "time", "multiplier", "node_id"}, prefix)
    return LimitConfig(
        value=Ref.parse(_get(data, "value", "DESE1.ChaPwrLim.setMag.f[SP]", prefix),
                        f"{prefix}.value"),
        quality=_opt_ref(data.get("quality"), f"{prefix}.quality"),
        time=_opt_ref(data.get("time"), f"{prefix}.time"),
        multiplier=_multiplier(data.get("multiplier", 0), f"{prefix}.multiplier"),
        node_id=data.get("node_id"))


def _schedule(data: Any, prefix: str) -> ScheduleConfig:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, "expected an LN name or a mapping")
    _known(data, {"name", "state", "state_quality", "priority", "entries", "interval",
                  "start", "value", "max_entries", "interval_unit_s", "multiplier"}, prefix)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{prefix}.name", f"expected a logical node name, got {name!r}")

    def ref(key: str, default: str) -> Ref:
        return Ref.parse(data.get(key, f"{name}.{default}"), f"{prefix}.{key}")

    quality = data.get("state_quality", f"{name}.SchdSt.q[ST]")
    value = data.get("value", f"{name}.ValASG{{n}}.setMag.f[SP]")
    if not isinstance(value, str) or "{n}" not in value:
        raise ConfigError(f"{prefix}.value", "must contain '{n}' (the entry number)")
    Ref.parse(value.replace("{n}", "1"), f"{prefix}.value")
    max_entries = data.get("max_entries", 96)
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or \
            not 1 <= max_entries <= 1024:
        raise ConfigError(f"{prefix}.max_entries", f"expected 1..1024, got {max_entries!r}")
    return ScheduleConfig(
        name=name, state=ref("state", "SchdSt.stVal[ST]"),
        state_quality=_opt_ref(quality, f"{prefix}.state_quality"),
        priority=ref("priority", "SchdPrio.setVal[SP]"),
        entries=ref("entries", "NumEntr.setVal[SP]"),
        interval=ref("interval", "SchdIntv.setVal[SP]"),
        start=ref("start", "StrTm.setTm[SP]"), value=value, max_entries=max_entries,
        interval_unit_s=_positive(data.get("interval_unit_s", 1.0),
                                  f"{prefix}.interval_unit_s"),
        multiplier=_multiplier(data.get("multiplier", 0), f"{prefix}.multiplier"))


def _publish(data: Mapping[str, Any], prefix: str) -> PublishConfig:
    _known(data, {"soc", "departure", "energy_requested", "power_target", "multiplier"},
           prefix)
    return PublishConfig(
        soc=_opt_ref(data.get("soc"), f"{prefix}.soc"),
        departure=_opt_ref(data.get("departure"), f"{prefix}.departure"),
        energy_requested=_opt_ref(data.get("energy_requested"), f"{prefix}.energy_requested"),
        power_target=_opt_ref(data.get("power_target"), f"{prefix}.power_target"),
        multiplier=_multiplier(data.get("multiplier", 0), f"{prefix}.multiplier"))


_SECONDS = ("connect_timeout_s", "request_timeout_s", "reconnect_min_s", "reconnect_max_s",
            "integrity_period_s", "poll_interval_s", "ttl_s", "max_age_s", "max_future_s",
            "max_power_kw")


def ied_from_mapping(data: Mapping[str, Any], prefix: str = "ied", *,
                     base_dir: Path | None = None) -> IedConfig:
    """Build and check one ``IedConfig`` from plain data (YAML/JSON); with ``scl`` the
    references it leaves out come from that SCL file (relative to ``base_dir``)."""
    if isinstance(data, Mapping) and "scl" in data:
        from adapters.iec61850.scl import with_scl_references  # scl imports this module

        data = with_scl_references(data, prefix, base_dir)
    _known(data, {"name", "host", "port", "domain", "node_id", "limit", "schedules",
                  "active_schedule", "reports", "publish", "accept_unsynchronized_clock",
                  "schedule_ttl_s", *_SECONDS}, prefix)
    for key in ("name", "host", "domain", "node_id"):
        value = _get(data, key, None, prefix)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{prefix}.{key}", "must be a non-empty string")
    port = data.get("port", 102)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{prefix}.port", f"expected 1..65535, got {port!r}")
    numbers = {key: _positive(data[key], f"{prefix}.{key}") for key in _SECONDS if key in data}
    limit = _limit(data["limit"], f"{prefix}.limit") if data.get("limit") is not None else None
    raw_schedules = data.get("schedules", ())
    if not isinstance(raw_schedules, Sequence) or isinstance(raw_schedules, str):
        raise ConfigError(f"{prefix}.schedules", "expected a list")
    schedules = tuple(_schedule(item, f"{prefix}.schedules[{i}]")
                      for i, item in enumerate(raw_schedules))
    if len({s.name for s in schedules}) != len(schedules):
        raise ConfigError(f"{prefix}.schedules", "schedule names must be unique")
    raw_reports = data.get("reports", ())
    if not isinstance(raw_reports, Sequence) or isinstance(raw_reports, str):
        raise ConfigError(f"{prefix}.reports", "expected a list")
    reports = []
    for i, item in enumerate(raw_reports):
        where = f"{prefix}.reports[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, "expected a mapping with 'rcb' and 'covers'")
        _known(item, {"rcb", "covers"}, where)
        rcb = item.get("rcb")
        if not isinstance(rcb, str) or not _RCB.match(rcb):
            raise ConfigError(f"{where}.rcb", f"expected 'LN$RP$name' or 'LN$BR$name', got "
                                              f"{rcb!r}")
        covers = tuple(item.get("covers", ()))
        if not covers or any(c not in ("limit", "schedules") for c in covers):
            raise ConfigError(f"{where}.covers", "expected a non-empty list of 'limit' and/or "
                                                 f"'schedules', got {covers!r}")
        reports.append(ReportConfig(rcb, covers))
    schedule_ttl = data.get("schedule_ttl_s")
    ied = IedConfig(
        name=data["name"], host=data["host"], port=port, domain=data["domain"],
        node_id=data["node_id"], limit=limit, schedules=schedules,
        active_schedule=_opt_ref(data.get("active_schedule"), f"{prefix}.active_schedule"),
        reports=tuple(reports),
        publish=_publish(data["publish"], f"{prefix}.publish") if data.get("publish") else None,
        accept_unsynchronized_clock=bool(data.get("accept_unsynchronized_clock", False)),
        schedule_ttl_s=None if schedule_ttl is None else _positive(
            schedule_ttl, f"{prefix}.schedule_ttl_s"),
        **numbers)
    check(ied, prefix)
    return ied


def check(ied: IedConfig, prefix: str = "ied") -> None:
    """Cross-field rules: TTL outlives the refresh cadence, backoff bounds are ordered."""
    if ied.limit is None and not ied.schedules:
        raise ConfigError(f"{prefix}.limit", "configure a limit and/or schedules to read")
    if ied.active_schedule is not None and not ied.schedules:
        raise ConfigError(f"{prefix}.active_schedule", "needs schedules to refer to")
    if ied.reconnect_max_s < ied.reconnect_min_s:
        raise ConfigError(f"{prefix}.reconnect_max_s", "must be >= reconnect_min_s")
    refresh_s = ied.integrity_period_s if ied.reports else ied.poll_interval_s
    if ied.ttl_s <= refresh_s:
        raise ConfigError(f"{prefix}.ttl_s", f"must exceed the refresh period ({refresh_s:g} s)"
                                             " or every limit lapses between refreshes")


def from_mapping(data: Mapping[str, Any], *, base_dir: Path | None = None) -> AdapterConfig:
    """Build the adapter configuration from ``{"ieds": [...]}`` (SCL paths from
    ``base_dir``, the configuration file's folder)."""
    if not isinstance(data, Mapping):
        raise ConfigError("iec61850", "expected a mapping with 'ieds'")
    _known(data, {"ieds"}, "iec61850")
    raw = data.get("ieds")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise ConfigError("ieds", "expected a non-empty list")
    ieds = tuple(ied_from_mapping(item, f"ieds[{i}]", base_dir=base_dir)
                 for i, item in enumerate(raw))
    if len({ied.name for ied in ieds}) != len(ieds):
        raise ConfigError("ieds", "IED names must be unique")
    return AdapterConfig(ieds)
