"""The VEN's configuration: the VTN, security, programs and how targets map to grid nodes.

Built from a plain mapping (a TOML table in the service configuration); every problem is a
``VenConfigError`` that names the dotted field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from aggregator.config_fields import FieldReader
from aggregator.model import ModelError

OptPolicyName = Literal["always", "feasible"]
TARGET_TYPES = ("ven_id", "party_id", "resource_id", "group_id")


class VenConfigError(ModelError):
    """A VEN configuration value is wrong; ``field`` is its dotted path."""


_fields = FieldReader(VenConfigError)


@dataclass(frozen=True, slots=True)
class ProgramConfig:
    """How the events of one DR program (an OpenADR market context) are read.

    ``simple_levels_kw`` maps a SIMPLE level to the import cap it means on the target nodes
    (level 0, normal operation, means no cap unless listed).  A ``mandatory`` program's limits
    apply whatever the opt decision; a voluntary program's limits apply only when opted in.
    Prices: ``priceRelative`` adds to and ``priceMultiplier`` multiplies
    ``base_import_price_per_kwh``; exports are paid ``export_price_ratio`` times the price.
    Demand charges (DEMAND_CHARGE, currency per kW of peak): ``priceRelative`` adds to and
    ``priceMultiplier`` multiplies ``base_demand_charge_per_kw``.
    """

    market_context: str
    mandatory: bool = False
    simple_levels_kw: Mapping[int, float] = field(default_factory=dict)
    base_import_price_per_kwh: float = 0.0
    export_price_ratio: float = 1.0
    dispatch_setpoint_is_cap: bool = True
    priority: int = 0
    base_demand_charge_per_kw: float = 0.0


@dataclass(frozen=True, slots=True)
class VenConfig:
    """Everything the VEN needs; see ``from_mapping`` for the accepted keys.

    ``opt_policy`` names the aggregator policy the service hands the VEN ("always", or
    "feasible": opt in only when the fleet can meet the event).
    """

    vtn_url: str
    ven_name: str
    state_file: Path
    programs: Mapping[str, ProgramConfig]
    targets: Mapping[str, Mapping[str, tuple[str, ...]]]
    default_nodes: tuple[str, ...] = ()
    node_max_import_kw: Mapping[str, float] = field(default_factory=dict)
    cert: Path | None = None
    key: Path | None = None
    ca_file: Path | None = None
    vtn_fingerprint: str | None = None
    require_signed: bool = False
    check_hostname: bool = True
    poll_interval_s: float | None = None
    opt_policy: OptPolicyName = "always"
    randomization_seed: int = 0
    report_resources: tuple[str, ...] = ()

    def program(self, market_context: str) -> ProgramConfig:
        """The program of ``market_context``, or the ``*`` program, or a voluntary default."""
        found = self.programs.get(market_context) or self.programs.get("*")
        return found if found is not None else ProgramConfig(market_context=market_context)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, prefix: str = "openadr") -> VenConfig:
        """Validate a configuration table and build the config (errors name the field)."""
        if not isinstance(data, Mapping):
            raise VenConfigError(prefix, "must be a table")
        known = {"vtn_url", "ven_name", "state_file", "programs", "targets", "default_nodes",
                 "node_max_import_kw", "cert", "key", "ca_file", "vtn_fingerprint",
                 "require_signed", "check_hostname", "poll_interval_s", "opt_policy",
                 "randomization_seed", "report_resources"}
        _fields.no_unknown(data, known, prefix)
        vtn_url = _fields.text(data, "vtn_url", prefix)
        parsed = urlparse(vtn_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise VenConfigError(f"{prefix}.vtn_url", f"must be an http(s) URL, got {vtn_url!r}")
        cert = _fields.path(data, "cert", prefix)
        key = _fields.path(data, "key", prefix)
        if (cert is None) != (key is None):
            raise VenConfigError(f"{prefix}.cert", "give both cert and key, or neither")
        fingerprint = data.get("vtn_fingerprint")
        if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint):
            raise VenConfigError(f"{prefix}.vtn_fingerprint", "must be a non-empty string")
        require_signed = _fields.flag(data, "require_signed", prefix, False)
        if require_signed and fingerprint is None:
            raise VenConfigError(f"{prefix}.vtn_fingerprint",
                                 "required when require_signed is true (it pins the VTN's key)")
        if require_signed and cert is None:
            raise VenConfigError(f"{prefix}.cert", "signing needs cert and key")
        poll = data.get("poll_interval_s")
        if poll is not None:
            poll = _number(poll, f"{prefix}.poll_interval_s", minimum=1.0)
        policy = data.get("opt_policy", "always")
        if policy not in ("always", "feasible"):
            raise VenConfigError(f"{prefix}.opt_policy",
                                 f"must be 'always' or 'feasible', got {policy!r}")
        seed = data.get("randomization_seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise VenConfigError(f"{prefix}.randomization_seed", "must be an integer")
        return cls(
            vtn_url=vtn_url.rstrip("/"),
            ven_name=_fields.text(data, "ven_name", prefix),
            state_file=Path(_fields.text(data, "state_file", prefix)),
            programs=_programs(data.get("programs", {}), f"{prefix}.programs"),
            targets=_targets(data.get("targets", {}), f"{prefix}.targets"),
            default_nodes=_names(data.get("default_nodes", []), f"{prefix}.default_nodes"),
            node_max_import_kw={
                str(node): _number(value, f"{prefix}.node_max_import_kw.{node}", minimum=0.0)
                for node, value in _fields.table(data.get("node_max_import_kw", {}),
                                          f"{prefix}.node_max_import_kw").items()},
            cert=cert, key=key, ca_file=_fields.path(data, "ca_file", prefix),
            vtn_fingerprint=fingerprint, require_signed=require_signed,
            check_hostname=_fields.flag(data, "check_hostname", prefix, True),
            poll_interval_s=poll, opt_policy=policy, randomization_seed=seed,
            report_resources=_names(data.get("report_resources", []),
                                    f"{prefix}.report_resources"),
        )


def _number(value: Any, where: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VenConfigError(where, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise VenConfigError(where, f"must be a finite number >= {minimum}, got {value!r}")
    return number


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise VenConfigError(where, "must be a list of names")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise VenConfigError(f"{where}[{index}]", "must be a non-empty string")
    return tuple(value)


def _targets(value: Any, where: str) -> dict[str, dict[str, tuple[str, ...]]]:
    table = _fields.table(value, where)
    result: dict[str, dict[str, tuple[str, ...]]] = {}
    for target_type, mapping in table.items():
        if target_type not in TARGET_TYPES:
            raise VenConfigError(f"{where}.{target_type}",
                                 f"unknown target type (known: {list(TARGET_TYPES)})")
        result[target_type] = {
            str(name): _names(nodes, f"{where}.{target_type}.{name}")
            for name, nodes in _fields.table(mapping, f"{where}.{target_type}").items()}
    return result


def _programs(value: Any, where: str) -> dict[str, ProgramConfig]:
    table = _fields.table(value, where)
    known = {"mandatory", "simple_levels_kw", "base_import_price_per_kwh", "export_price_ratio",
             "dispatch_setpoint_is_cap", "priority", "base_demand_charge_per_kw"}
    result: dict[str, ProgramConfig] = {}
    for context, raw in table.items():
        here = f"{where}.{context}"
        spec = _fields.table(raw, here)
        _fields.no_unknown(spec, known, here)
        levels: dict[int, float] = {}
        for level, cap_kw in _fields.table(spec.get("simple_levels_kw", {}),
                                    f"{here}.simple_levels_kw").items():
            try:
                number = int(level)
            except ValueError as err:
                raise VenConfigError(f"{here}.simple_levels_kw.{level}",
                                     "a SIMPLE level must be an integer 0..3") from err
            if not 0 <= number <= 3:
                raise VenConfigError(f"{here}.simple_levels_kw.{level}",
                                     "a SIMPLE level must be an integer 0..3")
            levels[number] = _number(cap_kw, f"{here}.simple_levels_kw.{level}", minimum=0.0)
        priority = spec.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise VenConfigError(f"{here}.priority", "must be an integer")
        result[str(context)] = ProgramConfig(
            market_context=str(context),
            mandatory=_fields.flag(spec, "mandatory", here, False),
            simple_levels_kw=levels,
            base_import_price_per_kwh=_number(spec.get("base_import_price_per_kwh", 0.0),
                                              f"{here}.base_import_price_per_kwh"),
            export_price_ratio=_number(spec.get("export_price_ratio", 1.0),
                                       f"{here}.export_price_ratio", minimum=0.0),
            dispatch_setpoint_is_cap=_fields.flag(spec, "dispatch_setpoint_is_cap", here, True),
            priority=priority,
            base_demand_charge_per_kw=_number(spec.get("base_demand_charge_per_kw", 0.0),
                                              f"{here}.base_demand_charge_per_kw", minimum=0.0),
        )
    return result
