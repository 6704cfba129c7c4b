"""The service configuration (TOML): grid nodes, stations and EVSEs, DSO adapters, storage.

Every table is validated when the file is read, adapters' tables by the adapters' own
readers, so ``gridflex serve`` refuses a bad file before it touches a station, with an
error naming the dotted field.  See ``scenarios/service.example.toml`` for every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.iec61850.config import AdapterConfig as IecConfig
from adapters.iec61850.config import from_mapping as iec_from_mapping
from adapters.ieee2030_5.config import ClientConfig as Sep2Config
from adapters.ocpp.csms import StationConfig
from adapters.openadr.config import VenConfig
from aggregator.config_fields import FieldReader
from aggregator.constraints import SafeDefault
from aggregator.controller import METHODS, ControllerSettings
from aggregator.model import Evse, GridNode, GridTree, ModelError, OcppVersion
from aggregator.scenario import PlanSettings
from aggregator.sessions import SessionDefaults


class ServiceConfigError(ModelError):
    """A bad service configuration value; the message names its dotted field."""


_fields = FieldReader(ServiceConfigError)
VERSIONS = {"1.6": OcppVersion.V16, "2.0.1": OcppVersion.V201, "2.1": OcppVersion.V21}


@dataclass(frozen=True)
class InfluxConfig:
    url: str
    org: str
    bucket: str
    token: str = ""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``gridflex serve`` runs."""

    tree: GridTree
    stations: tuple[StationConfig, ...]
    station_versions: Mapping[str, OcppVersion]
    ledger_url: str = "sqlite:///gridflex-ledger.db"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ocpp_host: str = "127.0.0.1"
    ocpp_port: int = 9000
    authorized_ids: frozenset[str] | None = None
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    plan: PlanSettings = field(default_factory=PlanSettings)
    session_defaults: SessionDefaults = field(default_factory=SessionDefaults)
    safe_defaults: tuple[SafeDefault, ...] = ()
    openadr: VenConfig | None = None
    ieee2030_5: Sep2Config | None = None
    iec61850: IecConfig | None = None
    influx: InfluxConfig | None = None

    @property
    def evses(self) -> dict[tuple[str, int], Evse]:
        """(station id, EVSE number) -> EVSE, as the session tracker wants them."""
        return {(s.station_id, n): self.tree.evse(e) for s in self.stations
                for n, e in s.evses.items()}


def load_service_config(path: Path) -> ServiceConfig:
    """Read and validate a TOML file."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ServiceConfigError("config", f"cannot read {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ServiceConfigError("config", f"{path} is not valid TOML: {err}") from None
    return service_config_from_mapping(data, base_dir=path.parent)


def service_config_from_mapping(data: Mapping[str, Any], *,
                                base_dir: Path | None = None) -> ServiceConfig:
    """Validate a configuration table (as read from TOML); files it names (an IED's SCL)
    are found relative to ``base_dir``, the configuration file's folder."""
    _fields.no_unknown(data, {"service", "controller", "plan", "sessions", "nodes", "ocpp",
                              "safe_defaults", "openadr", "ieee2030_5", "iec61850", "influx"},
                       "config")
    service = _fields.table(data.get("service", {}), "service")
    _fields.no_unknown(service, {"ledger_url", "api_host", "api_port"}, "service")
    nodes = [_node(item, f"nodes[{i}]") for i, item in
             enumerate(_fields.items(data, "nodes", "config"))]
    if not nodes:
        raise ServiceConfigError("nodes", "at least one grid node is required")
    ocpp = _fields.table(data.get("ocpp", {}), "ocpp")
    _fields.no_unknown(ocpp, {"host", "port", "authorized_ids", "stations"}, "ocpp")
    stations, versions, evses = [], {}, []
    for i, raw in enumerate(_fields.items(ocpp, "stations", "ocpp")):
        station, version, found = _station(raw, f"ocpp.stations[{i}]")
        stations.append(station)
        versions[station.station_id] = version
        evses.extend(found)
    if len({s.station_id for s in stations}) != len(stations):
        raise ServiceConfigError("ocpp.stations", "station ids must be unique")
    try:
        tree = GridTree(nodes=tuple(nodes), evses=tuple(evses))
    except ModelError as err:
        raise ServiceConfigError(f"nodes.{err.field}", err.message) from None
    ids = ocpp.get("authorized_ids")
    if ids is not None and (not isinstance(ids, list) or not all(
            isinstance(x, str) and x for x in ids)):
        raise ServiceConfigError("ocpp.authorized_ids", "must be a list of id tokens")
    defaults = []
    for i, raw in enumerate(_fields.items(data, "safe_defaults", "config")):
        where = f"safe_defaults[{i}]"
        _fields.no_unknown(raw, {"source", "node", "import_max_kw", "export_max_kw"}, where)
        node = _fields.text(raw, "node", where)
        if not tree.can_constrain(node):
            raise ServiceConfigError(f"{where}.node", f"unknown node {node!r}")
        try:
            defaults.append(SafeDefault(
                source=_fields.text(raw, "source", where), node_id=node,
                import_max_kw=_optional_kw(raw, "import_max_kw", where),
                export_max_kw=_optional_kw(raw, "export_max_kw", where)))
        except ServiceConfigError:
            raise
        except ModelError as err:
            raise ServiceConfigError(f"{where}.{err.field}", err.message) from None
    adapters = _adapters(data, tree, base_dir)
    influx = None
    if "influx" in data:
        table = _fields.table(data["influx"], "influx")
        _fields.no_unknown(table, {"url", "org", "bucket", "token"}, "influx")
        influx = InfluxConfig(_fields.text(table, "url", "influx"),
                              _fields.text(table, "org", "influx"),
                              _fields.text(table, "bucket", "influx"),
                              str(table.get("token", "")))
    return ServiceConfig(
        tree=tree, stations=tuple(stations), station_versions=versions,
        ledger_url=str(service.get("ledger_url", "sqlite:///gridflex-ledger.db")),
        api_host=str(service.get("api_host", "127.0.0.1")),
        api_port=_fields.integer(service, "api_port", "service", 8080, maximum=65535),
        ocpp_host=str(ocpp.get("host", "127.0.0.1")),
        ocpp_port=_fields.integer(ocpp, "port", "ocpp", 9000, maximum=65535),
        authorized_ids=None if ids is None else frozenset(ids),
        controller=_controller(_fields.table(data.get("controller", {}), "controller")),
        plan=_plan(_fields.table(data.get("plan", {}), "plan")),
        session_defaults=_sessions(_fields.table(data.get("sessions", {}), "sessions")),
        safe_defaults=tuple(defaults), influx=influx, **adapters)


def _node(raw: Mapping[str, Any], where: str) -> GridNode:
    _fields.no_unknown(raw, {"id", "kind", "parent", "name"}, where)
    try:
        return GridNode(_fields.text(raw, "id", where), raw.get("kind", "site"),
                        raw.get("parent"), str(raw.get("name", "")))
    except ModelError as err:
        raise ServiceConfigError(f"{where}.{err.field}", err.message) from None


def _station(raw: Mapping[str, Any], where: str) -> tuple[StationConfig, OcppVersion,
                                                           list[Evse]]:
    _fields.no_unknown(raw, {"id", "password", "version", "rate_unit", "evses"}, where)
    station_id = _fields.text(raw, "id", where)
    version = VERSIONS.get(str(raw.get("version", "2.0.1")))
    if version is None:
        raise ServiceConfigError(f"{where}.version", f"one of {sorted(VERSIONS)}")
    unit = raw.get("rate_unit", "A")
    if unit not in ("A", "W"):
        raise ServiceConfigError(f"{where}.rate_unit", "must be A or W")
    numbers: dict[int, str] = {}
    evses = []
    for j, item in enumerate(_fields.items(raw, "evses", where)):
        at = f"{where}.evses[{j}]"
        _fields.no_unknown(item, {"number", "id", "node", "max_import_kw", "max_export_kw",
                                  "phases", "voltage_v", "min_current_a", "v2g"}, at)
        number = _fields.integer(item, "number", at, None, minimum=1)
        if number in numbers:
            raise ServiceConfigError(f"{at}.number", f"EVSE {number} is listed twice")
        try:
            evse = Evse(_fields.text(item, "id", at), _fields.text(item, "node", at),
                        max_import_kw=_fields.number(item, "max_import_kw", at, None, minimum=0),
                        max_export_kw=_fields.number(item, "max_export_kw", at, 0.0, minimum=0),
                        phases=_fields.integer(item, "phases", at, 3, minimum=1, maximum=3),
                        voltage_v=_fields.number(item, "voltage_v", at, 230.0, minimum=1),
                        min_current_a=_fields.number(item, "min_current_a", at, 6.0, minimum=0),
                        v2g_capable=_fields.flag(item, "v2g", at, False), ocpp_version=version)
        except ServiceConfigError:
            raise
        except ModelError as err:
            raise ServiceConfigError(f"{at}.{err.field}", err.message) from None
        numbers[number] = evse.evse_id
        evses.append(evse)
    if not numbers:
        raise ServiceConfigError(f"{where}.evses", "at least one EVSE is required")
    password = raw.get("password")
    if password is not None and not isinstance(password, str):
        raise ServiceConfigError(f"{where}.password", "must be a string")
    return StationConfig(station_id, password, numbers, unit), version, evses


def _optional_kw(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if key not in raw else _fields.number(raw, key, where, None, minimum=0)


def _controller(raw: Mapping[str, Any]) -> ControllerSettings:
    w = "controller"
    _fields.no_unknown(raw, {"interval_s", "horizon_intervals", "debounce_s", "period_s",
                             "deviation_kw", "overstay_s", "method", "time_limit_s"}, w)
    method = raw.get("method", "auto")
    if method not in METHODS:
        raise ServiceConfigError(f"{w}.method", f"one of {', '.join(METHODS)}")
    return ControllerSettings(
        interval=timedelta(seconds=_fields.integer(raw, "interval_s", w, 900, minimum=1)),
        horizon_intervals=_fields.integer(raw, "horizon_intervals", w, 96, minimum=1,
                                          maximum=10_000),
        debounce_s=_fields.number(raw, "debounce_s", w, 0.5, minimum=0.001),
        period_s=_fields.number(raw, "period_s", w, 300.0, minimum=0.1),
        deviation_kw=_fields.number(raw, "deviation_kw", w, 1.0, minimum=0.01),
        overstay=timedelta(seconds=_fields.number(raw, "overstay_s", w, 3600.0, minimum=60)),
        method=method, time_limit_s=_fields.number(raw, "time_limit_s", w, 30.0, minimum=0.1))


def _plan(raw: Mapping[str, Any]) -> PlanSettings:
    known = ("degradation_cost_per_kwh", "unmet_penalty_per_kwh", "setpoint_penalty_per_kwh",
             "default_import_price_per_kwh", "default_export_price_per_kwh")
    _fields.no_unknown(raw, known, "plan")
    return PlanSettings(**{k: _fields.number(raw, k, "plan", None) for k in known if k in raw})


def _sessions(raw: Mapping[str, Any]) -> SessionDefaults:
    w = "sessions"
    _fields.no_unknown(raw, {"battery_capacity_kwh", "soc", "dwell_s", "min_soc_v2g",
                             "energy_kwh"}, w)
    d = SessionDefaults()
    return SessionDefaults(
        battery_capacity_kwh=_fields.number(raw, "battery_capacity_kwh", w,
                                            d.battery_capacity_kwh, minimum=0.1),
        soc=_fields.number(raw, "soc", w, d.soc, minimum=0, maximum=1),
        dwell=timedelta(seconds=_fields.number(raw, "dwell_s", w, d.dwell.total_seconds(),
                                               minimum=60)),
        min_soc_v2g=_fields.number(raw, "min_soc_v2g", w, d.min_soc_v2g, minimum=0, maximum=1),
        energy_kwh=None if "energy_kwh" not in raw else _fields.number(
            raw, "energy_kwh", w, None, minimum=0))


def _adapters(data: Mapping[str, Any], tree: GridTree,
              base_dir: Path | None) -> dict[str, Any]:
    """The DSO adapters' tables, each validated by its own reader; nodes they name must
    exist in the tree."""
    found: dict[str, Any] = {}
    if "openadr" in data:
        found["openadr"] = VenConfig.from_mapping(data["openadr"], prefix="openadr")
    if "ieee2030_5" in data:
        found["ieee2030_5"] = Sep2Config.from_mapping(data["ieee2030_5"], prefix="ieee2030_5")
    if "iec61850" in data:
        found["iec61850"] = iec_from_mapping(data["iec61850"], base_dir=base_dir)
    for name, nodes in _named_nodes(found).items():
        for node in nodes:
            if not tree.can_constrain(node):
                raise ServiceConfigError(name, f"names node {node!r}, which is not in [[nodes]] "
                                               f"or an EVSE")
    return found


def _named_nodes(found: Mapping[str, Any]) -> dict[str, set[str]]:
    named: dict[str, set[str]] = {}
    if (ven := found.get("openadr")) is not None:
        named["openadr"] = set(ven.default_nodes) | {
            n for by_name in ven.targets.values() for nodes in by_name.values() for n in nodes}
    if (sep2 := found.get("ieee2030_5")) is not None:
        named["ieee2030_5.sites"] = {n for site in sep2.sites.values()
                                     for n in (site.nodes.site, *site.nodes.evses)}
    if (iec := found.get("iec61850")) is not None:
        named["iec61850.ieds"] = {ied.node_id for ied in iec.ieds}
    return named
