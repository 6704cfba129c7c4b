"""Read a planning :class:`Scenario` from a YAML or JSON file, reporting field paths and lines.

Both formats go through PyYAML's safe *composer* (never ``safe_load``), so every value keeps
the line it came from; the node tree is then checked against a fixed schema by hand.  Any
problem, from a syntax error to an EVSE naming an unknown node, comes out as one
:class:`ScenarioError` that names the dotted field path and the line, so a user can fix the
file without reading a traceback.  The format is documented in ``scenarios/README.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from yaml.nodes import Node, ScalarNode

from aggregator.model import (
    DemandCharge,
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    ModelError,
    NodeKind,
    NodeLoad,
    OcppVersion,
    PriceSignal,
    Session,
)
from aggregator.scenario import PlanSettings, Scenario
from aggregator.session_generator import SessionGenerator, generate_sessions
from aggregator.yaml_fields import (
    DOCUMENT,
    MAX_FILE_BYTES,
    TAG_FLOAT,
    TAG_INT,
    TAG_STR,
    FieldError,
    Fields,
    build,
    compose,
    describe,
    int_in,
    items,
    keep_node,
    model_reason,
    node_line,
    to_bool,
    to_datetime,
    to_float,
    to_name,
    to_str,
    too_large,
)

__all__ = ["DOCUMENT", "MAX_FILE_BYTES", "REPLAY_KEYS", "ScenarioError", "load_scenario",
           "parse_scenario", "read_text", "scenario_document"]

_MAX_PRIORITY = 1_000_000_000

class ScenarioError(ValueError):
    """A scenario file is invalid.

    ``path`` is the dotted field path (``sessions[3].arrival``, or ``<document>`` for the
    file as a whole), ``line`` the 1-based line or ``None`` when no line applies, ``source``
    the file name and ``reason`` the bare message.
    """

    def __init__(self, source: str, path: str, line: int | None, reason: str) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {path}: {reason}")
        self.source = source
        self.path = path
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.path, self.line, self.reason))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the YAML or JSON scenario file at ``path`` (UTF-8, at most 20 MiB)."""
    return parse_scenario(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """The text of a scenario file (UTF-8, a BOM allowed, at most 20 MiB) or ScenarioError."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
                raise ScenarioError(source, DOCUMENT, None, too_large())
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ScenarioError(source, DOCUMENT, None,
                            f"cannot read the file: {err.strerror or err}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(source, DOCUMENT, None, too_large())
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ScenarioError(source, DOCUMENT, line,
                            f"the file is not UTF-8 text (bad byte at offset {err.start})"
                            ) from None


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Validate scenario ``text`` (YAML or JSON); ``source`` names it in error messages."""
    try:
        return scenario_document(text)[0]
    except FieldError as bad:
        raise ScenarioError(source, bad.path, bad.line, bad.reason) from None


def _to_kind(node: Node, path: str) -> NodeKind:
    return _enum_value(NodeKind, to_str(node, path), node, path)


def _to_ocpp(node: Node, path: str) -> OcppVersion:
    """An OCPP version; a YAML number such as ``1.6`` is taken as written ("1.6")."""
    if isinstance(node, ScalarNode) and node.tag in (TAG_STR, TAG_FLOAT, TAG_INT):
        return _enum_value(OcppVersion, str(node.value), node, path)
    raise FieldError(path, node_line(node),
                     f"expected an OCPP version string, got {describe(node)}")


_E = TypeVar("_E", NodeKind, OcppVersion)


def _enum_value(kind: type[_E], text: str, node: Node, path: str) -> _E:
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise FieldError(path, node_line(node),
                         f"unknown value {text[:40]!r} (allowed: {allowed})") from None


# --- the sections ---------------------------------------------------------------------------

REPLAY_KEYS = ("replay", "dso", "faults", "safe_defaults")
"""Top-level sections only a replay reads (``aggregator.replay_file``); ``load_scenario``
accepts them without reading them."""
_TOP_KEYS = ("name", "description", "start", "interval_minutes", "intervals", "settings",
             "nodes", "evses", "sessions", "generator", "constraints", "prices", "loads",
             "demand_charges", *REPLAY_KEYS)
_NODE_KEYS = ("id", "kind", "parent", "name", "import_max_kw", "export_max_kw")
_EVSE_KEYS = ("id", "node", "max_import_kw", "max_export_kw", "phases", "voltage_v",
              "min_current_a", "v2g", "ocpp")
_SESSION_KEYS = ("id", "evse", "arrival", "departure", "battery_kwh", "soc", "energy_kwh",
                 "target_soc", "min_soc_v2g", "max_soc", "max_charge_kw", "max_discharge_kw",
                 "charge_efficiency", "discharge_efficiency")
_CONSTRAINT_KEYS = ("node", "start", "end", "import_max_kw", "export_max_kw", "setpoint_kw",
                    "source", "ref", "priority", "received_at", "expires_at")
_PRICE_KEYS = ("start", "end", "import_per_kwh", "export_per_kwh")
_LOAD_KEYS = ("node", "start", "end", "load_kw")
_DEMAND_CHARGE_KEYS = ("node", "start", "end", "price_per_kw")

# Domain field -> file key, per object kind (fields not listed keep their name).
_NODE_FIELDS = {"node_id": "id", "parent_id": "parent"}
_EVSE_FIELDS = {"evse_id": "id", "node_id": "node", "v2g_capable": "v2g",
                "ocpp_version": "ocpp"}
_SESSION_FIELDS = {"session_id": "id", "evse_id": "evse", "battery_capacity_kwh": "battery_kwh",
                   "soc_initial": "soc", "energy_requested_kwh": "energy_kwh"}
_CONSTRAINT_FIELDS = {"node_id": "node", "source_ref": "ref"}
_PRICE_FIELDS = {"import_price_per_kwh": "import_per_kwh",
                 "export_price_per_kwh": "export_per_kwh"}
_LOAD_FIELDS = {"node_id": "node"}
_DEMAND_CHARGE_FIELDS = {"node_id": "node"}
_SCENARIO_FIELDS = {"interval": "interval_minutes", "n_intervals": "intervals"}


@dataclass(frozen=True)
class _Horizon:
    start: datetime
    end: datetime


def scenario_document(text: str) -> tuple[Scenario, Fields]:
    """The scenario of ``text`` and its top-level fields (for the replay sections), or
    ``FieldError``."""
    root = Fields(compose(text), "", _TOP_KEYS)
    name = root.required("name", to_name)
    description = root.optional("description", to_str, "")
    start = root.required("start", to_datetime)
    minutes = root.optional("interval_minutes", int_in(1, 1440), 15)
    n_intervals = root.required("intervals", int_in(1, 10_000))
    interval = timedelta(minutes=minutes)
    try:
        horizon = _Horizon(start, start + n_intervals * interval)
    except OverflowError:
        raise FieldError("intervals", root.line_of("intervals"),
                         "the horizon would end after the year 9999") from None
    settings = _parse_settings(root.values.get("settings"))

    node_entries = items(root.required("nodes", keep_node), "nodes", required=True)
    if not node_entries:
        raise FieldError("nodes", root.line_of("nodes"), "must list at least one node")
    nodes: list[tuple[GridNode, Fields]] = []
    ratings: list[GridConstraint] = []
    for path, entry in node_entries:
        grid_node, fields, rating = _parse_node(entry, path, horizon)
        nodes.append((grid_node, fields))
        if rating is not None:
            ratings.append(rating)
    evses = [_parse_evse(entry, path)
             for path, entry in items(root.required("evses", keep_node), "evses", required=True)]
    sessions = [_parse_session(entry, path)
                for path, entry in items(root.values.get("sessions"), "sessions")]
    generated = _generate(root.values.get("generator"), [e for e, _ in evses],
                          [s for s, _ in sessions], horizon)
    constraints = [_parse_constraint(entry, path, horizon)
                   for path, entry in items(root.values.get("constraints"), "constraints")]
    prices = [_parse_price(entry, path)
              for path, entry in items(root.values.get("prices"), "prices")]
    loads = [_parse_load(entry, path)
             for path, entry in items(root.values.get("loads"), "loads")]
    charges = [_parse_demand_charge(entry, path, horizon)
               for path, entry in items(root.values.get("demand_charges"), "demand_charges")]

    try:
        tree = GridTree(tuple(node for node, _ in nodes), tuple(evse for evse, _ in evses))
        scenario = Scenario(
            name=name, start=start, interval=interval, n_intervals=n_intervals, tree=tree,
            sessions=(*(session for session, _ in sessions), *generated),
            constraints=(*ratings, *(constraint for constraint, _ in constraints)),
            prices=tuple(prices), loads=tuple(load for load, _ in loads),
            settings=settings, description=description,
            demand_charges=tuple(charge for charge, _ in charges))
    except ModelError as err:
        raise _locate(err, root, nodes, evses, sessions, constraints, loads, charges) from None
    return scenario, root


def _parse_settings(node: Node | None) -> PlanSettings:
    if node is None:
        return PlanSettings()
    names = tuple(item.name for item in dataclass_fields(PlanSettings))
    fields = Fields(node, "settings", names)
    values = {name: fields.required(name, to_float) for name in names if name in fields.values}
    return build(fields, {}, lambda: PlanSettings(**values))


def _generate(node: Node | None, evses: Sequence[Evse], listed: Sequence[Session],
              horizon: _Horizon) -> tuple[Session, ...]:
    """Sessions drawn by a seeded ``SessionGenerator`` over the horizon, on the EVSEs it
    names (default: every EVSE without a listed session), ids ``g-0000``, ``g-0001``..."""
    if node is None:
        return ()
    names = tuple(item.name for item in dataclass_fields(SessionGenerator))
    fields = Fields(node, "generator", (*names, "evses"))
    values: dict[str, Any] = {}
    for name in names:
        if name in fields.values:
            convert = int_in(0, 2**32 - 1) if name in ("count", "seed") else to_float
            values[name] = fields.required(name, convert)
    if "count" not in values:
        raise FieldError("generator.count", fields.line, "missing required key 'count'")
    generator = build(fields, {}, lambda: SessionGenerator(**values))
    by_id = {evse.evse_id: evse for evse in evses}
    busy = {session.evse_id for session in listed}
    if "evses" in fields.values:
        pool = []
        for path, entry in items(fields.values["evses"], "generator.evses"):
            evse_id = to_str(entry, path)
            if evse_id not in by_id:
                raise FieldError(path, node_line(entry), f"unknown EVSE {evse_id[:60]!r}")
            if evse_id in busy:
                raise FieldError(path, node_line(entry), f"EVSE {evse_id!r} has listed "
                                 "sessions; the generator only fills EVSEs without any")
            pool.append(by_id[evse_id])
    else:
        pool = [evse for evse in evses if evse.evse_id not in busy]
    if not pool and generator.count:
        raise FieldError("generator.evses", fields.line_of("evses"),
                         "no EVSE to place sessions on (every EVSE has listed sessions)")
    try:
        sessions = generate_sessions(generator, pool, horizon.start, horizon.end)
    except ModelError as err:  # the horizon shorter than min_dwell_h, EVSE ids repeated
        raise FieldError("generator", fields.line, f"cannot draw sessions over the horizon: "
                         f"{model_reason(err)}") from None
    taken = {session.session_id for session in listed}
    clash = next((s.session_id for s in sessions if s.session_id in taken), None)
    if clash is not None:
        raise FieldError("generator", fields.line,
                         f"generated session id {clash!r} is also a listed session's id")
    return sessions


def _parse_node(node: Node, path: str,
                horizon: _Horizon) -> tuple[GridNode, Fields, GridConstraint | None]:
    fields = Fields(node, path, _NODE_KEYS)
    node_id = fields.required("id", to_str)
    kind = fields.required("kind", _to_kind)
    parent = fields.optional("parent", to_str, None)
    name = fields.optional("name", to_str, "")
    import_max_kw = fields.optional("import_max_kw", to_float, None)
    export_max_kw = fields.optional("export_max_kw", to_float, None)
    grid_node = build(fields, _NODE_FIELDS, lambda: GridNode(node_id, kind, parent, name))
    rating = None
    if import_max_kw is not None or export_max_kw is not None:
        rating = build(fields, {"node_id": "id"}, lambda: GridConstraint(
            node_id=node_id, start=horizon.start, end=horizon.end, source="rating",
            source_ref=path, received_at=horizon.start, import_max_kw=import_max_kw,
            export_max_kw=export_max_kw))
    return grid_node, fields, rating


def _parse_evse(node: Node, path: str) -> tuple[Evse, Fields]:
    fields = Fields(node, path, _EVSE_KEYS)
    evse_id = fields.required("id", to_str)
    node_id = fields.required("node", to_str)
    max_import_kw = fields.required("max_import_kw", to_float)
    max_export_kw = fields.optional("max_export_kw", to_float, 0.0)
    phases = fields.optional("phases", int_in(1, 3), 3)
    voltage_v = fields.optional("voltage_v", to_float, 230.0)
    min_current_a = fields.optional("min_current_a", to_float, 6.0)
    v2g = fields.optional("v2g", to_bool, False)
    ocpp = fields.optional("ocpp", _to_ocpp, OcppVersion.V201)
    evse = build(fields, _EVSE_FIELDS, lambda: Evse(
        evse_id=evse_id, node_id=node_id, max_import_kw=max_import_kw,
        max_export_kw=max_export_kw, phases=phases, voltage_v=voltage_v,
        min_current_a=min_current_a, v2g_capable=v2g, ocpp_version=ocpp))
    return evse, fields


def _parse_session(node: Node, path: str) -> tuple[Session, Fields]:
    fields = Fields(node, path, _SESSION_KEYS)
    session_id = fields.required("id", to_str)
    evse_id = fields.required("evse", to_str)
    arrival = fields.required("arrival", to_datetime)
    departure = fields.required("departure", to_datetime)
    battery_kwh = fields.required("battery_kwh", to_float)
    soc = fields.required("soc", to_float)
    energy_kwh = fields.optional("energy_kwh", to_float, None)
    target_soc = fields.optional("target_soc", to_float, None)
    if (energy_kwh is None) == (target_soc is None):
        raise FieldError(fields.sub("energy_kwh"), fields.line_of("energy_kwh"),
                         "give exactly one of energy_kwh and target_soc")
    min_soc_v2g = fields.optional("min_soc_v2g", to_float, 0.2)
    max_soc = fields.optional("max_soc", to_float, None)
    max_charge_kw = fields.required("max_charge_kw", to_float)
    max_discharge_kw = fields.optional("max_discharge_kw", to_float, 0.0)
    charge_efficiency = fields.optional("charge_efficiency", to_float, 0.95)
    discharge_efficiency = fields.optional("discharge_efficiency", to_float, 0.95)
    session = build(fields, _SESSION_FIELDS, lambda: Session(
        session_id=session_id, evse_id=evse_id, arrival=arrival, departure=departure,
        battery_capacity_kwh=battery_kwh, soc_initial=soc, max_charge_kw=max_charge_kw,
        energy_requested_kwh=energy_kwh, target_soc=target_soc, min_soc_v2g=min_soc_v2g,
        max_discharge_kw=max_discharge_kw, charge_efficiency=charge_efficiency,
        discharge_efficiency=discharge_efficiency, max_soc=max_soc))
    return session, fields


def _parse_constraint(node: Node, path: str,
                      horizon: _Horizon) -> tuple[GridConstraint, Fields]:
    fields = Fields(node, path, _CONSTRAINT_KEYS)
    node_id = fields.required("node", to_str)
    start = fields.required("start", to_datetime)
    end = fields.required("end", to_datetime)
    import_max_kw = fields.optional("import_max_kw", to_float, None)
    export_max_kw = fields.optional("export_max_kw", to_float, None)
    setpoint_kw = fields.optional("setpoint_kw", to_float, None)
    source = fields.optional("source", to_str, "scenario")
    ref = fields.optional("ref", to_str, path)
    priority = fields.optional("priority", int_in(-_MAX_PRIORITY, _MAX_PRIORITY), 0)
    received_at = fields.optional("received_at", to_datetime, horizon.start)
    expires_at = fields.optional("expires_at", to_datetime, None)
    constraint = build(fields, _CONSTRAINT_FIELDS, lambda: GridConstraint(
        node_id=node_id, start=start, end=end, source=source, source_ref=ref,
        received_at=received_at, import_max_kw=import_max_kw, export_max_kw=export_max_kw,
        setpoint_kw=setpoint_kw, priority=priority, expires_at=expires_at))
    return constraint, fields


def _parse_price(node: Node, path: str) -> PriceSignal:
    fields = Fields(node, path, _PRICE_KEYS)
    start = fields.required("start", to_datetime)
    end = fields.required("end", to_datetime)
    import_per_kwh = fields.required("import_per_kwh", to_float)
    export_per_kwh = fields.required("export_per_kwh", to_float)
    return build(fields, _PRICE_FIELDS, lambda: PriceSignal(
        start=start, end=end, import_price_per_kwh=import_per_kwh,
        export_price_per_kwh=export_per_kwh, source="scenario"))


def _parse_load(node: Node, path: str) -> tuple[NodeLoad, Fields]:
    fields = Fields(node, path, _LOAD_KEYS)
    node_id = fields.required("node", to_str)
    start = fields.required("start", to_datetime)
    end = fields.required("end", to_datetime)
    load_kw = fields.required("load_kw", to_float)
    load = build(fields, _LOAD_FIELDS, lambda: NodeLoad(
        node_id=node_id, start=start, end=end, load_kw=load_kw))
    return load, fields


def _parse_demand_charge(node: Node, path: str,
                         horizon: _Horizon) -> tuple[DemandCharge, Fields]:
    fields = Fields(node, path, _DEMAND_CHARGE_KEYS)
    node_id = fields.required("node", to_str)
    start = fields.required("start", to_datetime)
    end = fields.required("end", to_datetime)
    price_per_kw = fields.required("price_per_kw", to_float)
    charge = build(fields, _DEMAND_CHARGE_FIELDS, lambda: DemandCharge(
        node_id=node_id, start=start, end=end, price_per_kw=price_per_kw, source="scenario",
        source_ref=path, received_at=horizon.start))
    return charge, fields


def _locate(err: ModelError, root: Fields, nodes: Sequence[tuple[GridNode, Fields]],
            evses: Sequence[tuple[Evse, Fields]], sessions: Sequence[tuple[Session, Fields]],
            constraints: Sequence[tuple[GridConstraint, Fields]],
            loads: Sequence[tuple[NodeLoad, Fields]],
            charges: Sequence[tuple[DemandCharge, Fields]]) -> FieldError:
    """Find the list entry behind a ``GridTree`` / ``Scenario`` cross-check failure.

    The checks are redone in the constructors' order; the first entry that fails is the
    one the model complained about.  Falls back to the top-level key.
    """
    reason = model_reason(err)

    def at(fields: Fields, key: str) -> FieldError:
        return FieldError(fields.sub(key), fields.line_of(key), reason)

    by_id: dict[str, GridNode] = {}
    for grid_node, fields in nodes:
        if grid_node.node_id in by_id:
            return at(fields, "id")
        by_id[grid_node.node_id] = grid_node
    for grid_node, fields in nodes:
        if grid_node.parent_id is not None and grid_node.parent_id not in by_id:
            return at(fields, "parent")
    for grid_node, fields in nodes:
        seen = {grid_node.node_id}
        current = grid_node
        while current.parent_id is not None:
            if current.parent_id in seen:
                return at(fields, "parent")
            seen.add(current.parent_id)
            current = by_id[current.parent_id]
    evse_ids: set[str] = set()
    for evse, fields in evses:
        if evse.evse_id in evse_ids or evse.evse_id in by_id:
            return at(fields, "id")
        evse_ids.add(evse.evse_id)
        if evse.node_id not in by_id:
            return at(fields, "node")
    session_ids: set[str] = set()
    for session, fields in sessions:
        if session.evse_id not in evse_ids:
            return at(fields, "evse")
        if session.session_id in session_ids:
            return at(fields, "id")
        session_ids.add(session.session_id)
    per_evse: dict[str, list[tuple[Session, Fields]]] = {}
    for session, fields in sessions:
        per_evse.setdefault(session.evse_id, []).append((session, fields))
    for entries in per_evse.values():
        entries.sort(key=lambda entry: entry[0].arrival)
        for (before, _), (after, fields) in pairwise(entries):
            if after.arrival < before.departure:
                return at(fields, "arrival")
    for constraint, fields in constraints:
        if constraint.node_id not in by_id and constraint.node_id not in evse_ids:
            return at(fields, "node")
    for load, fields in loads:
        if load.node_id not in by_id:
            return at(fields, "node")
    for charge, fields in charges:
        if charge.node_id not in by_id:
            return at(fields, "node")
    key = _SCENARIO_FIELDS.get(err.field, err.field)
    if key in _TOP_KEYS:
        return FieldError(key, root.line_of(key), reason)
    return FieldError(DOCUMENT, root.line, reason)
