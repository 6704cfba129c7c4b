"""Read a replay from a scenario file: the scenario plus its ``replay``, ``dso``, ``faults``
and ``safe_defaults`` sections (format in ``scenarios/README.md``).

The DSO timeline stays in each protocol's own terms and is checked here by the adapters'
own readers, so a file fails at load time, with its field path and line, exactly where the
live adapter would refuse the message: OpenADR events through the VEN's event
translation, 2030.5 DERControls through the hardened XML reader, IEC 61850 schedules
through the adapter's value checks and IED configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from yaml.nodes import Node

from adapters.iec61850.config import IedConfig, ied_from_mapping
from adapters.iec61850.values import SCHEDULE_STATES
from adapters.ieee2030_5.controls import SiteNodes
from adapters.openadr.config import VenConfig
from aggregator.constraints import SafeDefault
from aggregator.dso_feeds import (
    DsoFeeds,
    IecSchedule,
    Sep2Program,
    iec_schedule,
    sep2_control,
    sep2_default,
)
from aggregator.model import ModelError
from aggregator.replay import (
    DSO_SOURCES,
    FAULT_KINDS,
    STRATEGIES,
    DsoItem,
    Fault,
    FaultKind,
    ReplayScenario,
    ReplaySettings,
    Strategy,
)
from aggregator.scenario import Scenario
from aggregator.scenario_file import ScenarioError, read_text, scenario_document
from aggregator.sessions import SessionDefaults
from aggregator.yaml_fields import (
    FieldError,
    Fields,
    int_in,
    items,
    keep_node,
    locate,
    node_line,
    plain,
    to_datetime,
    to_float,
    to_name,
    to_str,
)

__all__ = ["load_replay", "parse_replay"]

_T = TypeVar("_T")

_REPLAY_KEYS = ("strategy", "step_minutes", "horizon_intervals", "period_minutes", "seed",
                "time_limit_s", "silent_evses", "session_defaults")
_DEFAULTS_KEYS = ("battery_kwh", "soc", "dwell_hours", "min_soc_v2g", "energy_kwh",
                  "charge_efficiency", "discharge_efficiency")
_FAULT_KEYS = ("kind", "target", "start", "end")
_SAFE_KEYS = ("source", "node", "import_max_kw", "export_max_kw")
_DSO_KEYS = ("openadr", "ieee2030_5", "iec61850")
# OpenADR event fields that are times or ISO-8601 durations in openleadr's event dict.
_OADR_TIMES = frozenset({"dtstart", "created_date_time"})
_OADR_DURATIONS = frozenset({"duration", "startafter", "ramp_up", "recovery"})
_STATE_NAMES = {name.replace("-", "_"): number for number, name in SCHEDULE_STATES.items()}


def load_replay(path: str | Path) -> ReplayScenario:
    """Read and validate the scenario file at ``path`` with its replay sections."""
    return parse_replay(read_text(path), str(path))


def parse_replay(text: str, source: str = "<string>") -> ReplayScenario:
    """Validate scenario ``text`` with its replay sections; errors are ``ScenarioError``."""
    try:
        scenario, root = scenario_document(text)
        return _replay(scenario, root)
    except FieldError as bad:
        raise ScenarioError(source, bad.path, bad.line, bad.reason) from None


def _replay(scenario: Scenario, root: Fields) -> ReplayScenario:
    known = _Known(scenario)
    settings, silent = _settings(root.values.get("replay"), scenario, known)
    faults = tuple(_fault(entry, path, known)
                   for path, entry in items(root.values.get("faults"), "faults"))
    safe = tuple(_safe_default(entry, path, known)
                 for path, entry in items(root.values.get("safe_defaults"), "safe_defaults"))
    feeds, dso = _dso(root.values.get("dso"), known, settings.seed)
    return ReplayScenario(scenario, settings, dso=dso, feeds=feeds, faults=faults,
                          safe_defaults=safe, silent_evses=silent)


class _Known:
    """The ids a section may name, with the error for one it may not."""

    def __init__(self, scenario: Scenario) -> None:
        self.nodes = {n.node_id for n in scenario.tree.nodes}
        self.evses = {e.evse_id for e in scenario.tree.evses}

    def node(self, value: str, path: str, line: int) -> str:
        if value not in self.nodes:
            raise FieldError(path, line, f"unknown node {value[:60]!r}")
        return value

    def evse(self, value: str, path: str, line: int) -> str:
        if value not in self.evses:
            raise FieldError(path, line, f"unknown EVSE {value[:60]!r}")
        return value


def _one_of(choices: tuple[str, ...]) -> Callable[[Node, str], str]:
    def convert(node: Node, path: str) -> str:
        value = to_str(node, path)
        if value not in choices:
            raise FieldError(path, node_line(node),
                             f"unknown value {value[:40]!r} (allowed: {', '.join(choices)})")
        return value

    return convert


def _positive(node: Node, path: str) -> float:
    value = to_float(node, path)
    if value <= 0:
        raise FieldError(path, node_line(node), f"must be > 0, got {value:g}")
    return value


def _settings(node: Node | None, scenario: Scenario,
              known: _Known) -> tuple[ReplaySettings, frozenset[str]]:
    if node is None:
        return ReplaySettings(), frozenset()
    fields = Fields(node, "replay", _REPLAY_KEYS)
    strategy = cast(Strategy, fields.optional("strategy", _one_of(STRATEGIES), "lp"))
    step_minutes = fields.optional("step_minutes", int_in(1, 1440), 5)
    interval_minutes = scenario.interval.total_seconds() / 60.0
    if interval_minutes % step_minutes:
        raise FieldError(fields.sub("step_minutes"), fields.line_of("step_minutes"),
                         f"must divide interval_minutes ({interval_minutes:g}), "
                         f"got {step_minutes}")
    horizon = fields.optional("horizon_intervals", int_in(1, 10_000), 32)
    period_minutes = fields.optional("period_minutes", int_in(1, 1440), 15)
    seed = fields.optional("seed", int_in(0, 2**32 - 1), 0)
    time_limit_s = fields.optional("time_limit_s", _positive, 30.0)
    silent = frozenset(
        known.evse(to_str(entry, path), path, node_line(entry))
        for path, entry in items(fields.values.get("silent_evses"), fields.sub("silent_evses")))
    defaults = _session_defaults(fields.values.get("session_defaults"))
    return ReplaySettings(step=timedelta(minutes=step_minutes), horizon_intervals=horizon,
                          period=timedelta(minutes=period_minutes), strategy=strategy,
                          seed=seed, time_limit_s=time_limit_s,
                          session_defaults=defaults), silent


def _session_defaults(node: Node | None) -> SessionDefaults:
    base = SessionDefaults()
    if node is None:
        return base
    fields = Fields(node, "replay.session_defaults", _DEFAULTS_KEYS)

    def fraction(key: str, default: float, low: float = 0.0) -> float:
        value = fields.optional(key, to_float, default)
        if not low <= value <= 1.0:
            raise FieldError(fields.sub(key), fields.line_of(key),
                             f"must be in {low:g}..1, got {value:g}")
        return value

    energy = fields.optional("energy_kwh", to_float, None)
    if energy is not None and energy < 0:
        raise FieldError(fields.sub("energy_kwh"), fields.line_of("energy_kwh"), "must be >= 0")
    return SessionDefaults(
        battery_capacity_kwh=fields.optional("battery_kwh", _positive,
                                             base.battery_capacity_kwh),
        soc=fraction("soc", base.soc),
        dwell=timedelta(hours=fields.optional("dwell_hours", _positive,
                                              base.dwell.total_seconds() / 3600.0)),
        min_soc_v2g=fraction("min_soc_v2g", base.min_soc_v2g),
        energy_kwh=energy,
        charge_efficiency=fraction("charge_efficiency", base.charge_efficiency, 0.01),
        discharge_efficiency=fraction("discharge_efficiency", base.discharge_efficiency, 0.01))


def _window(fields: Fields) -> tuple[datetime, datetime]:
    start = fields.required("start", to_datetime)
    end = fields.required("end", to_datetime)
    if end <= start:
        raise FieldError(fields.sub("end"), fields.line_of("end"), "must be after start")
    return start, end


def _fault(node: Node, path: str, known: _Known) -> Fault:
    fields = Fields(node, path, _FAULT_KEYS)
    kind = fields.required("kind", _one_of(FAULT_KINDS))
    target = fields.required("target", to_name)
    line = fields.line_of("target")
    if kind == "link_loss":
        if target not in DSO_SOURCES:
            raise FieldError(fields.sub("target"), line,
                             f"a link_loss names a DSO source ({', '.join(DSO_SOURCES)}), "
                             f"got {target[:40]!r}")
    else:
        known.evse(target, fields.sub("target"), line)
    start, end = _window(fields)
    return Fault(cast(FaultKind, kind), target, start, end)


def _safe_default(node: Node, path: str, known: _Known) -> SafeDefault:
    fields = Fields(node, path, _SAFE_KEYS)
    source = fields.required("source", _one_of(DSO_SOURCES))
    node_id = known.node(fields.required("node", to_str), fields.sub("node"),
                         fields.line_of("node"))
    imp = fields.optional("import_max_kw", to_float, None)
    exp = fields.optional("export_max_kw", to_float, None)
    return _model(fields, {"node_id": "node"},
                  lambda: SafeDefault(source, node_id, import_max_kw=imp, export_max_kw=exp))


def _model(fields: Fields, keys: Mapping[str, str], make: Callable[[], _T]) -> _T:
    try:
        return make()
    except ModelError as err:
        key = keys.get(err.field, err.field)
        raise FieldError(fields.sub(key), fields.line_of(key), err.message) from None


def _adapter(node: Node, path: str, make: Callable[[], _T]) -> _T:
    """Run an adapter's own reader; its error (a dotted field under ``path``) gets a line."""
    try:
        return make()
    except ModelError as err:
        where = err.field if err.field.startswith(path) else f"{path}.{err.field}"
        line = locate(node, where[len(path):].lstrip("."))
        raise FieldError(where, line, err.message) from None
    except ValueError as err:
        raise FieldError(path, node_line(node), str(err)) from None


# --- the DSO timeline ------------------------------------------------------------------------

def _dso(node: Node | None, known: _Known,
         seed: int) -> tuple[DsoFeeds | None, tuple[DsoItem, ...]]:
    if node is None:
        return None, ()
    fields = Fields(node, "dso", _DSO_KEYS)
    feeds = DsoFeeds()
    dso: list[DsoItem] = []
    if "openadr" in fields.values:
        feeds.openadr, events = _openadr(fields.values["openadr"], "dso.openadr", known, seed)
        dso.extend(events)
    if "ieee2030_5" in fields.values:
        sites, programs = _sep2(fields.values["ieee2030_5"], "dso.ieee2030_5", known)
        feeds.sep2_sites, feeds.sep2_programs = sites, programs
    if "iec61850" in fields.values:
        feeds.ieds, schedules = _iec(fields.values["iec61850"], "dso.iec61850", known)
        dso.extend(schedules)
    return feeds, tuple(dso)


def _openadr(node: Node, path: str, known: _Known,
             seed: int) -> tuple[VenConfig, list[DsoItem]]:
    """The VEN's configuration (``VenConfig`` keys; the VTN's address is not needed) and
    the events the VTN distributes, each as openleadr hands it to the VEN."""
    from adapters.openadr.signals import translate

    fields = Fields(node, path, ("ven", "events"))
    ven_node = fields.required("ven", keep_node)
    ven_path = fields.sub("ven")
    raw = plain(ven_node, ven_path)
    if not isinstance(raw, dict):
        raise FieldError(ven_path, node_line(ven_node), "expected a mapping")
    raw = {"vtn_url": "http://127.0.0.1:9/replay", "ven_name": "replay-ven",
           "state_file": "replay.json", "randomization_seed": seed, **raw}
    config = _adapter(ven_node, ven_path, lambda: VenConfig.from_mapping(raw, prefix=ven_path))
    for i, node_id in enumerate(config.default_nodes):
        known.node(node_id, f"{ven_path}.default_nodes[{i}]",
                   locate(ven_node, f"default_nodes[{i}]"))
    for kind, names in config.targets.items():
        for name, node_ids in names.items():
            for node_id in node_ids:
                where = f"targets.{kind}.{name}"
                known.node(node_id, f"{ven_path}.{where}", locate(ven_node, where))
    events: list[DsoItem] = []
    for entry_path, entry in items(fields.values.get("events"), fields.sub("events")):
        item = Fields(entry, entry_path, ("at", "event"))
        at = item.required("at", to_datetime)
        event_node = item.required("event", keep_node)
        event_path = item.sub("event")
        event = plain(event_node, event_path, times=_OADR_TIMES, durations=_OADR_DURATIONS)
        _adapter(event_node, event_path, partial(translate, event, config, received_at=at,
                                                 baseline_kw=_no_baseline))
        events.append(DsoItem(at, "openadr", event))
    return config, events


def _no_baseline(node_id: str, start: datetime, end: datetime) -> float:
    """Checking an event needs a baseline for relative signals; any number checks them."""
    return 0.0


def _sep2(node: Node, path: str,
          known: _Known) -> tuple[tuple[SiteNodes, ...], tuple[Sep2Program, ...]]:
    """Sites (where a site's controls land) and DER programs with their DefaultDERControl
    and DERControls as XML, each control listed from the moment the server publishes it."""
    fields = Fields(node, path, ("sites", "programs"))
    sites = []
    for site_path, entry in items(fields.required("sites", keep_node), fields.sub("sites"),
                                  required=True):
        site = Fields(entry, site_path, ("site", "evses", "fixed_w_charge_basis_kw",
                                         "fixed_w_discharge_basis_kw"))
        site_id = known.node(site.required("site", to_str), site.sub("site"),
                             site.line_of("site"))
        evses = tuple(known.evse(to_str(e, p), p, node_line(e))
                      for p, e in items(site.values.get("evses"), site.sub("evses")))
        sites.append(SiteNodes(site_id, evses,
                               site.optional("fixed_w_charge_basis_kw", _positive, None),
                               site.optional("fixed_w_discharge_basis_kw", _positive, None)))
    programs = []
    for program_path, entry in items(fields.values.get("programs"), fields.sub("programs")):
        program = Fields(entry, program_path, ("id", "primacy", "default", "controls"))
        program_id = program.required("id", to_name)
        primacy = program.required("primacy", int_in(0, 255))
        default = None
        if "default" in program.values:
            xml_node = program.values["default"]
            where = program.sub("default")
            xml = to_str(xml_node, where)
            default = _adapter(xml_node, where, partial(sep2_default, xml, where))
        controls = []
        for control_path, control in items(program.values.get("controls"),
                                           program.sub("controls")):
            item = Fields(control, control_path, ("at", "xml"))
            at = item.required("at", to_datetime)
            xml = item.required("xml", to_str)
            where = item.sub("xml")
            controls.append((at, _adapter(item.values["xml"], where,
                                          partial(sep2_control, xml, where))))
        programs.append(Sep2Program(program_id, primacy, default, tuple(controls)))
    return tuple(sites), tuple(programs)


def _iec(node: Node, path: str,
         known: _Known) -> tuple[dict[str, IedConfig], list[DsoItem]]:
    """IEDs (``IedConfig`` keys; no address is needed) and the FSCH schedules each holds
    from ``at`` on (SchdPrio, StrTm, SchdIntv, ValASG in W, SchdSt); as live, an IED's
    schedules are read only when its configuration lists them."""
    fields = Fields(node, path, ("ieds", "schedules"))
    ieds_node = fields.required("ieds", keep_node)
    ieds_fields = Fields(ieds_node, fields.sub("ieds"), None)
    ieds: dict[str, IedConfig] = {}
    for name, ied_node in ieds_fields.values.items():
        where = ieds_fields.sub(name)
        raw = plain(ied_node, where)
        if not isinstance(raw, dict):
            raise FieldError(where, node_line(ied_node), "expected a mapping")
        raw = {"name": name, "host": "replay", "domain": name, **raw}
        ied = _adapter(ied_node, where, partial(ied_from_mapping, raw, prefix=where))
        known.node(ied.node_id, f"{where}.node_id", locate(ied_node, "node_id"))
        ieds[name] = ied
    if not ieds:
        raise FieldError(fields.sub("ieds"), node_line(ieds_node), "name at least one IED")
    schedules: list[DsoItem] = []
    keys = ("at", "ied", "name", "priority", "start", "interval_s", "values_w", "state")
    for entry_path, entry in items(fields.values.get("schedules"), fields.sub("schedules")):
        item = Fields(entry, entry_path, keys)
        at = item.required("at", to_datetime)
        ied_name = item.required("ied", _one_of(tuple(ieds)))
        name = item.required("name", _one_of(tuple(s.name for s in ieds[ied_name].schedules)))
        priority = item.required("priority", int_in(0, 2**31 - 1))
        start = item.required("start", to_datetime)
        interval_s = item.required("interval_s", _positive)
        limit_w = ieds[ied_name].max_power_kw * 1000.0
        values_w = []
        for value_path, value_node in items(item.required("values_w", keep_node),
                                            item.sub("values_w"), required=True):
            value = to_float(value_node, value_path)
            if not 0.0 <= value <= limit_w:
                raise FieldError(value_path, node_line(value_node),
                                 f"must be in 0..{limit_w:g} W (the IED's max_power_kw), "
                                 f"got {value:g}")
            values_w.append(value)
        if not values_w:
            raise FieldError(item.sub("values_w"), item.line_of("values_w"),
                             "at least one value")
        state = item.optional("state", _one_of(tuple(_STATE_NAMES)), "running")
        reading = iec_schedule(name, priority=priority, start=start, interval_s=interval_s,
                               values_w=values_w, state=_STATE_NAMES[state],
                               max_kw=ieds[ied_name].max_power_kw, where=entry_path)
        schedules.append(DsoItem(at, "iec61850", IecSchedule(at, ied_name, reading)))
    return ieds, schedules
