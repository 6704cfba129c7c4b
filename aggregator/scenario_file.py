"""Read a planning :class:`Scenario` from a YAML or JSON file, reporting field paths and lines.

Both formats go through PyYAML's safe *composer* (never ``safe_load``), so every value keeps
the line it came from; the node tree is then checked against a fixed schema by hand.  Any
problem, from a syntax error to an EVSE naming an unknown node, comes out as one
:class:`ScenarioError` that names the dotted field path and the line, so a user can fix the
file without reading a traceback.  The format is documented in ``scenarios/README.md``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aggregator.model import (
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

__all__ = ["DOCUMENT", "MAX_FILE_BYTES", "ScenarioError", "load_scenario", "parse_scenario"]

MAX_FILE_BYTES = 20 * 1024 * 1024
"""Largest scenario file accepted (20 MiB); bigger input is refused before parsing."""

DOCUMENT = "<document>"
"""The ``path`` of errors about the file as a whole (syntax, size, empty, wrong root)."""

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_TAG_NAMES = {_STR: "a string", _INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean",
              _TIMESTAMP: "a timestamp"}
# A plain scalar such as ``1e5`` is a number in JSON but a string in YAML 1.1; accept it.
_JSON_EXPONENT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][-+]?[0-9]+\Z")
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)\Z")
_SCALARS = SafeConstructor()  # used only for its stateless int/float/bool conversions
_MAX_PRIORITY = 1_000_000_000

_T = TypeVar("_T")
_D = TypeVar("_D")
_Convert = Callable[[Node, str], _T]


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


class _FieldError(Exception):
    """Internal: a problem found while walking; ``parse_scenario`` adds the source name."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.line = line
        self.reason = reason


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the YAML or JSON scenario file at ``path`` (UTF-8, at most 20 MiB)."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
                raise ScenarioError(source, DOCUMENT, None, _too_large())
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ScenarioError(source, DOCUMENT, None,
                            f"cannot read the file: {err.strerror or err}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(source, DOCUMENT, None, _too_large())
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ScenarioError(source, DOCUMENT, line,
                            f"the file is not UTF-8 text (bad byte at offset {err.start})"
                            ) from None
    return parse_scenario(text, source)


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Validate scenario ``text`` (YAML or JSON); ``source`` names it in error messages."""
    try:
        return _parse(text)
    except _FieldError as bad:
        raise ScenarioError(source, bad.path, bad.line, bad.reason) from None


# --- the document -------------------------------------------------------------------------

def _too_large() -> str:
    return f"larger than {MAX_FILE_BYTES} bytes (20 MiB), refusing to parse"


def _compose(text: str) -> Node:
    """The single document of ``text`` as a node tree, or ``_FieldError``."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise _FieldError(DOCUMENT, None, _too_large())
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as err:
        raise _FieldError(DOCUMENT, text.count("\n", 0, int(err.position)) + 1,
                          f"character {_codepoint(err.character)} is not allowed in YAML"
                          ) from None
    try:
        root = loader.get_node() if loader.check_node() else None
        if root is not None and loader.check_node():
            second = loader.get_node()
            raise _FieldError(DOCUMENT, None if second is None else _line(second),
                              "found a second document; a scenario file holds exactly one")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = "; ".join(part for part in (err.context, err.problem) if part)
        raise _FieldError(DOCUMENT, None if mark is None else mark.line + 1,
                          f"not valid YAML/JSON: {problem or 'syntax error'}") from None
    except yaml.YAMLError as err:
        raise _FieldError(DOCUMENT, None, f"not valid YAML/JSON: {err}") from None
    except RecursionError:
        raise _FieldError(DOCUMENT, None, "not valid YAML/JSON: nested too deeply") from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL and root.value == ""):
        raise _FieldError(DOCUMENT, None, "the document is empty")
    if not isinstance(root, MappingNode):
        raise _FieldError(DOCUMENT, _line(root),
                          f"the top level must be a mapping, got {_describe(root)}")
    return root


def _codepoint(character: object) -> str:
    return f"#x{character:04x}" if isinstance(character, int) else repr(character)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(node: Node) -> str:
    """What a node holds, for 'expected X, got Y' messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    kind = _TAG_NAMES.get(node.tag)
    if kind is None:
        return f"a value tagged {node.tag[:60]!r}"
    value = str(node.value)
    shown = value if len(value) <= 40 else value[:37] + "..."
    return f"{kind} ({shown!r})"


# --- scalars --------------------------------------------------------------------------------

def _to_str(node: Node, path: str) -> str:
    if isinstance(node, ScalarNode) and node.tag == _STR:
        return str(node.value)
    raise _FieldError(path, _line(node), f"expected a string, got {_describe(node)}")


def _to_name(node: Node, path: str) -> str:
    value = _to_str(node, path)
    if not value.strip():
        raise _FieldError(path, _line(node), "must be a non-empty string")
    return value


def _yaml_int(node: ScalarNode, path: str) -> int:
    """A YAML integer written in plain decimal (``010`` would silently be octal 8)."""
    text = str(node.value)
    if not _DECIMAL_INT.match(text):
        raise _FieldError(path, _line(node), f"write {text[:40]!r} as a plain decimal number "
                          "(YAML reads leading zeros, 0x, 0b and a:b as other bases)")
    try:
        return _SCALARS.construct_yaml_int(node)
    except ValueError:  # more digits than int() accepts
        raise _FieldError(path, _line(node), f"{text[:40]}... has too many digits") from None


def _to_float(node: Node, path: str) -> float:
    """A finite number; YAML ints and floats, and JSON exponents such as ``1e5``."""
    if isinstance(node, ScalarNode):
        text = str(node.value)
        number: float | None = None
        try:
            if node.tag == _INT:
                number = float(_yaml_int(node, path))
            elif node.tag == _FLOAT and ":" not in text:
                number = _SCALARS.construct_yaml_float(node)
            elif node.tag == _STR and node.style is None and _JSON_EXPONENT.match(text):
                number = float(text)
        except (ValueError, OverflowError):
            raise _FieldError(path, _line(node), f"{text[:40]!r} is not a usable number") from None
        if number is not None:
            if not math.isfinite(number):
                raise _FieldError(path, _line(node), f"must be a finite number, got {text[:40]}")
            return number
    raise _FieldError(path, _line(node), f"expected a number, got {_describe(node)}")


def _int_in(low: int, high: int) -> _Convert[int]:
    """A converter accepting only YAML integers in ``low..high``."""

    def convert(node: Node, path: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = _yaml_int(node, path)
            if not low <= value <= high:
                shown = str(value) if abs(value) < 10**40 else str(node.value)[:40] + "..."
                raise _FieldError(path, _line(node),
                                  f"must be an integer in {low}..{high}, got {shown}")
            return value
        raise _FieldError(path, _line(node), f"expected an integer, got {_describe(node)}")

    return convert


def _to_bool(node: Node, path: str) -> bool:
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        return _SCALARS.construct_yaml_bool(node)
    raise _FieldError(path, _line(node), f"expected true or false, got {_describe(node)}")


def _to_datetime(node: Node, path: str) -> datetime:
    """An ISO-8601 date-time with an explicit UTC offset, converted to UTC."""
    example = "e.g. 2026-11-20T16:00:00Z or 2026-11-20T17:00:00+01:00"
    if not (isinstance(node, ScalarNode) and node.tag in (_STR, _TIMESTAMP)):
        raise _FieldError(path, _line(node), f"expected a date-time ({example}), "
                          f"got {_describe(node)}")
    text = str(node.value)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _FieldError(path, _line(node), f"{text[:40]!r} is not an ISO-8601 date-time "
                          f"({example})") from None
    if moment.utcoffset() is None:
        raise _FieldError(path, _line(node), f"date-time {text!r} has no UTC offset; "
                          f"add Z or +hh:mm ({example})")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise _FieldError(path, _line(node), f"date-time {text!r} is out of range in UTC") from None


def _to_kind(node: Node, path: str) -> NodeKind:
    return _enum_value(NodeKind, _to_str(node, path), node, path)


def _to_ocpp(node: Node, path: str) -> OcppVersion:
    """An OCPP version; a YAML number such as ``1.6`` is taken as written ("1.6")."""
    if isinstance(node, ScalarNode) and node.tag in (_STR, _FLOAT, _INT):
        return _enum_value(OcppVersion, str(node.value), node, path)
    raise _FieldError(path, _line(node), f"expected an OCPP version string, got {_describe(node)}")


_E = TypeVar("_E", NodeKind, OcppVersion)


def _enum_value(kind: type[_E], text: str, node: Node, path: str) -> _E:
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise _FieldError(path, _line(node),
                          f"unknown value {text[:40]!r} (allowed: {allowed})") from None


def _node(node: Node, _path: str) -> Node:
    """The identity converter: keep the node for a caller that walks it."""
    return node


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


# --- mappings and lists ---------------------------------------------------------------------

class _Fields:
    """One YAML mapping checked for duplicate, unknown and non-string keys.

    Values stay nodes until read through :meth:`required` / :meth:`optional`, so every
    error can name the key's dotted path and line.
    """

    def __init__(self, node: Node, path: str, allowed: Sequence[str]) -> None:
        self.path = path
        if not isinstance(node, MappingNode):
            raise _FieldError(path or DOCUMENT, _line(node),
                              f"expected a mapping, got {_describe(node)}")
        self.line = _line(node)
        self.values: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        pairs: list[tuple[Node, Node]] = node.value
        for key_node, value_node in pairs:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                raise _FieldError(path or DOCUMENT, _line(key_node),
                                  "merge keys (<<) are not supported; write the keys out")
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                raise _FieldError(path or DOCUMENT, _line(key_node),
                                  f"keys must be strings, got {_describe(key_node)}")
            key = str(key_node.value)
            if key in self.values:
                raise _FieldError(self.sub(key), _line(key_node),
                                  f"duplicate key {key!r} (first at line {key_lines[key]})")
            if key not in allowed:
                raise _FieldError(self.sub(key), _line(key_node),
                                  f"unknown key {key[:60]!r} (allowed: {', '.join(allowed)})")
            self.values[key] = value_node
            key_lines[key] = _line(key_node)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int:
        """Line of ``key``'s value if present, else of the mapping itself."""
        node = self.values.get(key)
        return self.line if node is None else _line(node)

    def required(self, key: str, convert: _Convert[_T]) -> _T:
        node = self.values.get(key)
        if node is None:
            raise _FieldError(self.sub(key), self.line, f"missing required key {key!r}")
        return convert(node, self.sub(key))

    def optional(self, key: str, convert: _Convert[_T], default: _D) -> _T | _D:
        """The converted value, ``default`` if absent (or null where the default is None)."""
        node = self.values.get(key)
        if node is None or (default is None and _is_null(node)):
            return default
        return convert(node, self.sub(key))


def _items(node: Node | None, path: str, *, required: bool = False) -> list[tuple[str, Node]]:
    """The entries of a YAML list with their paths (``path[i]``).

    An optional list may be absent or null (an emptied ``sessions:``), meaning no entries;
    a required one must be a list (callers check that it is present).
    """
    if node is None or (not required and _is_null(node)):
        return []
    if not isinstance(node, SequenceNode):
        raise _FieldError(path, _line(node), f"expected a list, got {_describe(node)}")
    entries: list[Node] = node.value
    return [(f"{path}[{index}]", entry) for index, entry in enumerate(entries)]


def _model_reason(err: ModelError) -> str:
    return str(err).removeprefix(f"{err.field}: ")


def _build(fields: _Fields, keys: Mapping[str, str], make: Callable[[], _T]) -> _T:
    """Call ``make``; a ``ModelError`` becomes ``_FieldError`` at the file key of its field.

    ``keys`` maps domain field names to the file's key names (``soc_initial`` -> ``soc``).
    """
    try:
        return make()
    except ModelError as err:
        key = keys.get(err.field, err.field)
        raise _FieldError(fields.sub(key), fields.line_of(key), _model_reason(err)) from None


# --- the sections ---------------------------------------------------------------------------

_TOP_KEYS = ("name", "description", "start", "interval_minutes", "intervals", "settings",
             "nodes", "evses", "sessions", "constraints", "prices", "loads")
_NODE_KEYS = ("id", "kind", "parent", "name", "import_max_kw", "export_max_kw")
_EVSE_KEYS = ("id", "node", "max_import_kw", "max_export_kw", "phases", "voltage_v",
              "min_current_a", "v2g", "ocpp")
_SESSION_KEYS = ("id", "evse", "arrival", "departure", "battery_kwh", "soc", "energy_kwh",
                 "target_soc", "min_soc_v2g", "max_charge_kw", "max_discharge_kw",
                 "charge_efficiency", "discharge_efficiency")
_CONSTRAINT_KEYS = ("node", "start", "end", "import_max_kw", "export_max_kw", "setpoint_kw",
                    "source", "ref", "priority", "received_at", "expires_at")
_PRICE_KEYS = ("start", "end", "import_per_kwh", "export_per_kwh")
_LOAD_KEYS = ("node", "start", "end", "load_kw")

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
_SCENARIO_FIELDS = {"interval": "interval_minutes", "n_intervals": "intervals"}


@dataclass(frozen=True)
class _Horizon:
    start: datetime
    end: datetime


def _parse(text: str) -> Scenario:
    root = _Fields(_compose(text), "", _TOP_KEYS)
    name = root.required("name", _to_name)
    description = root.optional("description", _to_str, "")
    start = root.required("start", _to_datetime)
    minutes = root.optional("interval_minutes", _int_in(1, 1440), 15)
    n_intervals = root.required("intervals", _int_in(1, 10_000))
    interval = timedelta(minutes=minutes)
    try:
        horizon = _Horizon(start, start + n_intervals * interval)
    except OverflowError:
        raise _FieldError("intervals", root.line_of("intervals"),
                          "the horizon would end after the year 9999") from None
    settings = _parse_settings(root.values.get("settings"))

    node_entries = _items(root.required("nodes", _node), "nodes", required=True)
    if not node_entries:
        raise _FieldError("nodes", root.line_of("nodes"), "must list at least one node")
    nodes: list[tuple[GridNode, _Fields]] = []
    ratings: list[GridConstraint] = []
    for path, entry in node_entries:
        grid_node, fields, rating = _parse_node(entry, path, horizon)
        nodes.append((grid_node, fields))
        if rating is not None:
            ratings.append(rating)
    evses = [_parse_evse(entry, path)
             for path, entry in _items(root.required("evses", _node), "evses", required=True)]
    sessions = [_parse_session(entry, path)
                for path, entry in _items(root.values.get("sessions"), "sessions")]
    constraints = [_parse_constraint(entry, path, horizon)
                   for path, entry in _items(root.values.get("constraints"), "constraints")]
    prices = [_parse_price(entry, path)
              for path, entry in _items(root.values.get("prices"), "prices")]
    loads = [_parse_load(entry, path)
             for path, entry in _items(root.values.get("loads"), "loads")]

    try:
        tree = GridTree(tuple(node for node, _ in nodes), tuple(evse for evse, _ in evses))
        return Scenario(
            name=name, start=start, interval=interval, n_intervals=n_intervals, tree=tree,
            sessions=tuple(session for session, _ in sessions),
            constraints=(*ratings, *(constraint for constraint, _ in constraints)),
            prices=tuple(prices), loads=tuple(load for load, _ in loads),
            settings=settings, description=description)
    except ModelError as err:
        raise _locate(err, root, nodes, evses, sessions, constraints, loads) from None


def _parse_settings(node: Node | None) -> PlanSettings:
    if node is None:
        return PlanSettings()
    names = tuple(item.name for item in dataclass_fields(PlanSettings))
    fields = _Fields(node, "settings", names)
    values = {name: fields.required(name, _to_float) for name in names if name in fields.values}
    return _build(fields, {}, lambda: PlanSettings(**values))


def _parse_node(node: Node, path: str,
                horizon: _Horizon) -> tuple[GridNode, _Fields, GridConstraint | None]:
    fields = _Fields(node, path, _NODE_KEYS)
    node_id = fields.required("id", _to_str)
    kind = fields.required("kind", _to_kind)
    parent = fields.optional("parent", _to_str, None)
    name = fields.optional("name", _to_str, "")
    import_max_kw = fields.optional("import_max_kw", _to_float, None)
    export_max_kw = fields.optional("export_max_kw", _to_float, None)
    grid_node = _build(fields, _NODE_FIELDS, lambda: GridNode(node_id, kind, parent, name))
    rating = None
    if import_max_kw is not None or export_max_kw is not None:
        rating = _build(fields, {"node_id": "id"}, lambda: GridConstraint(
            node_id=node_id, start=horizon.start, end=horizon.end, source="rating",
            source_ref=path, received_at=horizon.start, import_max_kw=import_max_kw,
            export_max_kw=export_max_kw))
    return grid_node, fields, rating


def _parse_evse(node: Node, path: str) -> tuple[Evse, _Fields]:
    fields = _Fields(node, path, _EVSE_KEYS)
    evse_id = fields.required("id", _to_str)
    node_id = fields.required("node", _to_str)
    max_import_kw = fields.required("max_import_kw", _to_float)
    max_export_kw = fields.optional("max_export_kw", _to_float, 0.0)
    phases = fields.optional("phases", _int_in(1, 3), 3)
    voltage_v = fields.optional("voltage_v", _to_float, 230.0)
    min_current_a = fields.optional("min_current_a", _to_float, 6.0)
    v2g = fields.optional("v2g", _to_bool, False)
    ocpp = fields.optional("ocpp", _to_ocpp, OcppVersion.V201)
    evse = _build(fields, _EVSE_FIELDS, lambda: Evse(
        evse_id=evse_id, node_id=node_id, max_import_kw=max_import_kw,
        max_export_kw=max_export_kw, phases=phases, voltage_v=voltage_v,
        min_current_a=min_current_a, v2g_capable=v2g, ocpp_version=ocpp))
    return evse, fields


def _parse_session(node: Node, path: str) -> tuple[Session, _Fields]:
    fields = _Fields(node, path, _SESSION_KEYS)
    session_id = fields.required("id", _to_str)
    evse_id = fields.required("evse", _to_str)
    arrival = fields.required("arrival", _to_datetime)
    departure = fields.required("departure", _to_datetime)
    battery_kwh = fields.required("battery_kwh", _to_float)
    soc = fields.required("soc", _to_float)
    energy_kwh = fields.optional("energy_kwh", _to_float, None)
    target_soc = fields.optional("target_soc", _to_float, None)
    if (energy_kwh is None) == (target_soc is None):
        raise _FieldError(fields.sub("energy_kwh"), fields.line_of("energy_kwh"),
                          "give exactly one of energy_kwh and target_soc")
    min_soc_v2g = fields.optional("min_soc_v2g", _to_float, 0.2)
    max_charge_kw = fields.required("max_charge_kw", _to_float)
    max_discharge_kw = fields.optional("max_discharge_kw", _to_float, 0.0)
    charge_efficiency = fields.optional("charge_efficiency", _to_float, 0.95)
    discharge_efficiency = fields.optional("discharge_efficiency", _to_float, 0.95)
    session = _build(fields, _SESSION_FIELDS, lambda: Session(
        session_id=session_id, evse_id=evse_id, arrival=arrival, departure=departure,
        battery_capacity_kwh=battery_kwh, soc_initial=soc, max_charge_kw=max_charge_kw,
        energy_requested_kwh=energy_kwh, target_soc=target_soc, min_soc_v2g=min_soc_v2g,
        max_discharge_kw=max_discharge_kw, charge_efficiency=charge_efficiency,
        discharge_efficiency=discharge_efficiency))
    return session, fields


def _parse_constraint(node: Node, path: str,
                      horizon: _Horizon) -> tuple[GridConstraint, _Fields]:
    fields = _Fields(node, path, _CONSTRAINT_KEYS)
    node_id = fields.required("node", _to_str)
    start = fields.required("start", _to_datetime)
    end = fields.required("end", _to_datetime)
    import_max_kw = fields.optional("import_max_kw", _to_float, None)
    export_max_kw = fields.optional("export_max_kw", _to_float, None)
    setpoint_kw = fields.optional("setpoint_kw", _to_float, None)
    source = fields.optional("source", _to_str, "scenario")
    ref = fields.optional("ref", _to_str, path)
    priority = fields.optional("priority", _int_in(-_MAX_PRIORITY, _MAX_PRIORITY), 0)
    received_at = fields.optional("received_at", _to_datetime, horizon.start)
    expires_at = fields.optional("expires_at", _to_datetime, None)
    constraint = _build(fields, _CONSTRAINT_FIELDS, lambda: GridConstraint(
        node_id=node_id, start=start, end=end, source=source, source_ref=ref,
        received_at=received_at, import_max_kw=import_max_kw, export_max_kw=export_max_kw,
        setpoint_kw=setpoint_kw, priority=priority, expires_at=expires_at))
    return constraint, fields


def _parse_price(node: Node, path: str) -> PriceSignal:
    fields = _Fields(node, path, _PRICE_KEYS)
    start = fields.required("start", _to_datetime)
    end = fields.required("end", _to_datetime)
    import_per_kwh = fields.required("import_per_kwh", _to_float)
    export_per_kwh = fields.required("export_per_kwh", _to_float)
    return _build(fields, _PRICE_FIELDS, lambda: PriceSignal(
        start=start, end=end, import_price_per_kwh=import_per_kwh,
        export_price_per_kwh=export_per_kwh, source="scenario"))


def _parse_load(node: Node, path: str) -> tuple[NodeLoad, _Fields]:
    fields = _Fields(node, path, _LOAD_KEYS)
    node_id = fields.required("node", _to_str)
    start = fields.required("start", _to_datetime)
    end = fields.required("end", _to_datetime)
    load_kw = fields.required("load_kw", _to_float)
    load = _build(fields, _LOAD_FIELDS, lambda: NodeLoad(
        node_id=node_id, start=start, end=end, load_kw=load_kw))
    return load, fields


def _locate(err: ModelError, root: _Fields, nodes: Sequence[tuple[GridNode, _Fields]],
            evses: Sequence[tuple[Evse, _Fields]], sessions: Sequence[tuple[Session, _Fields]],
            constraints: Sequence[tuple[GridConstraint, _Fields]],
            loads: Sequence[tuple[NodeLoad, _Fields]]) -> _FieldError:
    """Find the list entry behind a ``GridTree`` / ``Scenario`` cross-check failure.

    The checks are redone in the constructors' order; the first entry that fails is the
    one the model complained about.  Falls back to the top-level key.
    """
    reason = _model_reason(err)

    def at(fields: _Fields, key: str) -> _FieldError:
        return _FieldError(fields.sub(key), fields.line_of(key), reason)

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
    per_evse: dict[str, list[tuple[Session, _Fields]]] = {}
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
    key = _SCENARIO_FIELDS.get(err.field, err.field)
    if key in _TOP_KEYS:
        return _FieldError(key, root.line_of(key), reason)
    return _FieldError(DOCUMENT, root.line, reason)
