"""YAML nodes checked field by field: every error names the dotted path and the line.

The toolkit behind the scenario and replay file readers.  Files go through PyYAML's safe
*composer* (never ``safe_load``), so every value keeps the line it came from; readers walk
the node tree with :class:`Fields` and the converters here, and any problem comes out as
one :class:`FieldError` (path, line, reason) that the reader turns into its own error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aggregator.model import ModelError

MAX_FILE_BYTES = 20 * 1024 * 1024
"""Largest scenario file accepted (20 MiB); bigger input is refused before parsing."""

DOCUMENT = "<document>"
"""The ``path`` of errors about the file as a whole (syntax, size, empty, wrong root)."""

TAG_STR = "tag:yaml.org,2002:str"
TAG_INT = "tag:yaml.org,2002:int"
TAG_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
TAG_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_TAG_NAMES = {TAG_STR: "a string", TAG_INT: "an integer", TAG_FLOAT: "a number", _BOOL: "a boolean",
              _TIMESTAMP: "a timestamp"}
# A plain scalar such as ``1e5`` is a number in JSON but a string in YAML 1.1; accept it.
_JSON_EXPONENT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][-+]?[0-9]+\Z")
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)\Z")
_SCALARS = SafeConstructor()  # used only for its stateless int/float/bool conversions

_T = TypeVar("_T")
_D = TypeVar("_D")
Convert = Callable[[Node, str], _T]


class FieldError(Exception):
    """A problem found while walking; the file reader adds the source name."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.line = line
        self.reason = reason


# --- the document -------------------------------------------------------------------------

def too_large() -> str:
    return f"larger than {MAX_FILE_BYTES} bytes (20 MiB), refusing to parse"


def compose(text: str) -> Node:
    """The single document of ``text`` as a node tree, or ``FieldError``."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise FieldError(DOCUMENT, None, too_large())
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as err:
        raise FieldError(DOCUMENT, text.count("\n", 0, int(err.position)) + 1,
                         f"character {_codepoint(err.character)} is not allowed in YAML"
                         ) from None
    try:
        root = loader.get_node() if loader.check_node() else None
        if root is not None and loader.check_node():
            second = loader.get_node()
            raise FieldError(DOCUMENT, None if second is None else node_line(second),
                             "found a second document; a scenario file holds exactly one")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = "; ".join(part for part in (err.context, err.problem) if part)
        raise FieldError(DOCUMENT, None if mark is None else mark.line + 1,
                         f"not valid YAML/JSON: {problem or 'syntax error'}") from None
    except yaml.YAMLError as err:
        raise FieldError(DOCUMENT, None, f"not valid YAML/JSON: {err}") from None
    except RecursionError:
        raise FieldError(DOCUMENT, None, "not valid YAML/JSON: nested too deeply") from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, ScalarNode) and root.tag == TAG_NULL and root.value == ""):
        raise FieldError(DOCUMENT, None, "the document is empty")
    if not isinstance(root, MappingNode):
        raise FieldError(DOCUMENT, node_line(root),
                         f"the top level must be a mapping, got {describe(root)}")
    return root


def _codepoint(character: object) -> str:
    return f"#x{character:04x}" if isinstance(character, int) else repr(character)


def node_line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def describe(node: Node) -> str:
    """What a node holds, for 'expected X, got Y' messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == TAG_NULL:
        return "null"
    kind = _TAG_NAMES.get(node.tag)
    if kind is None:
        return f"a value tagged {node.tag[:60]!r}"
    value = str(node.value)
    shown = value if len(value) <= 40 else value[:37] + "..."
    return f"{kind} ({shown!r})"


# --- scalars --------------------------------------------------------------------------------

def to_str(node: Node, path: str) -> str:
    if isinstance(node, ScalarNode) and node.tag == TAG_STR:
        return str(node.value)
    raise FieldError(path, node_line(node), f"expected a string, got {describe(node)}")


def to_name(node: Node, path: str) -> str:
    value = to_str(node, path)
    if not value.strip():
        raise FieldError(path, node_line(node), "must be a non-empty string")
    return value


def _yaml_int(node: ScalarNode, path: str) -> int:
    """A YAML integer written in plain decimal (``010`` would silently be octal 8)."""
    text = str(node.value)
    if not _DECIMAL_INT.match(text):
        raise FieldError(path, node_line(node), f"write {text[:40]!r} as a plain decimal number "
                         "(YAML reads leading zeros, 0x, 0b and a:b as other bases)")
    try:
        return _SCALARS.construct_yaml_int(node)
    except ValueError:  # more digits than int() accepts
        raise FieldError(path, node_line(node), f"{text[:40]}... has too many digits") from None


def to_float(node: Node, path: str) -> float:
    """A finite number; YAML ints and floats, and JSON exponents such as ``1e5``."""
    if isinstance(node, ScalarNode):
        text = str(node.value)
        number: float | None = None
        try:
            if node.tag == TAG_INT:
                number = float(_yaml_int(node, path))
            elif node.tag == TAG_FLOAT and ":" not in text:
                number = _SCALARS.construct_yaml_float(node)
            elif node.tag == TAG_STR and node.style is None and _JSON_EXPONENT.match(text):
                number = float(text)
        except (ValueError, OverflowError):
            raise FieldError(path, node_line(node),
                             f"{text[:40]!r} is not a usable number") from None
        if number is not None:
            if not math.isfinite(number):
                raise FieldError(path, node_line(node), f"must be a finite number, got {text[:40]}")
            return number
    raise FieldError(path, node_line(node), f"expected a number, got {describe(node)}")


def int_in(low: int, high: int) -> Convert[int]:
    """A converter accepting only YAML integers in ``low..high``."""

    def convert(node: Node, path: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == TAG_INT:
            value = _yaml_int(node, path)
            if not low <= value <= high:
                shown = str(value) if abs(value) < 10**40 else str(node.value)[:40] + "..."
                raise FieldError(path, node_line(node),
                                 f"must be an integer in {low}..{high}, got {shown}")
            return value
        raise FieldError(path, node_line(node), f"expected an integer, got {describe(node)}")

    return convert


def to_bool(node: Node, path: str) -> bool:
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        return _SCALARS.construct_yaml_bool(node)
    raise FieldError(path, node_line(node), f"expected true or false, got {describe(node)}")


def to_datetime(node: Node, path: str) -> datetime:
    """An ISO-8601 date-time with an explicit UTC offset, converted to UTC."""
    example = "e.g. 2026-11-20T16:00:00Z or 2026-11-20T17:00:00+01:00"
    if not (isinstance(node, ScalarNode) and node.tag in (TAG_STR, _TIMESTAMP)):
        raise FieldError(path, node_line(node), f"expected a date-time ({example}), "
                         f"got {describe(node)}")
    text = str(node.value)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(path, node_line(node), f"{text[:40]!r} is not an ISO-8601 date-time "
                         f"({example})") from None
    if moment.utcoffset() is None:
        raise FieldError(path, node_line(node), f"date-time {text!r} has no UTC offset; "
                         f"add Z or +hh:mm ({example})")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise FieldError(path, node_line(node),
                         f"date-time {text!r} is out of range in UTC") from None


def keep_node(node: Node, _path: str) -> Node:
    """The identity converter: keep the node for a caller that walks it."""
    return node


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == TAG_NULL


# --- mappings and lists ---------------------------------------------------------------------

class Fields:
    """One YAML mapping checked for duplicate, unknown (unless ``allowed`` is None) and
    non-string keys.

    Values stay nodes until read through :meth:`required` / :meth:`optional`, so every
    error can name the key's dotted path and line.
    """

    def __init__(self, node: Node, path: str, allowed: Sequence[str] | None) -> None:
        self.path = path
        if not isinstance(node, MappingNode):
            raise FieldError(path or DOCUMENT, node_line(node),
                             f"expected a mapping, got {describe(node)}")
        self.line = node_line(node)
        self.values: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        pairs: list[tuple[Node, Node]] = node.value
        for key_node, value_node in pairs:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                raise FieldError(path or DOCUMENT, node_line(key_node),
                                 "merge keys (<<) are not supported; write the keys out")
            if not (isinstance(key_node, ScalarNode) and key_node.tag == TAG_STR):
                raise FieldError(path or DOCUMENT, node_line(key_node),
                                 f"keys must be strings, got {describe(key_node)}")
            key = str(key_node.value)
            if key in self.values:
                raise FieldError(self.sub(key), node_line(key_node),
                                 f"duplicate key {key!r} (first at line {key_lines[key]})")
            if allowed is not None and key not in allowed:
                raise FieldError(self.sub(key), node_line(key_node),
                                 f"unknown key {key[:60]!r} (allowed: {', '.join(allowed)})")
            self.values[key] = value_node
            key_lines[key] = node_line(key_node)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int:
        """Line of ``key``'s value if present, else of the mapping itself."""
        node = self.values.get(key)
        return self.line if node is None else node_line(node)

    def required(self, key: str, convert: Convert[_T]) -> _T:
        node = self.values.get(key)
        if node is None:
            raise FieldError(self.sub(key), self.line, f"missing required key {key!r}")
        return convert(node, self.sub(key))

    def optional(self, key: str, convert: Convert[_T], default: _D) -> _T | _D:
        """The converted value, ``default`` if absent (or null where the default is None)."""
        node = self.values.get(key)
        if node is None or (default is None and is_null(node)):
            return default
        return convert(node, self.sub(key))


def items(node: Node | None, path: str, *, required: bool = False) -> list[tuple[str, Node]]:
    """The entries of a YAML list with their paths (``path[i]``).

    An optional list may be absent or null (an emptied ``sessions:``), meaning no entries;
    a required one must be a list (callers check that it is present).
    """
    if node is None or (not required and is_null(node)):
        return []
    if not isinstance(node, SequenceNode):
        raise FieldError(path, node_line(node), f"expected a list, got {describe(node)}")
    entries: list[Node] = node.value
    return [(f"{path}[{index}]", entry) for index, entry in enumerate(entries)]


def model_reason(err: ModelError) -> str:
    return str(err).removeprefix(f"{err.field}: ")


def build(fields: Fields, keys: Mapping[str, str], make: Callable[[], _T]) -> _T:
    """Call ``make``; a ``ModelError`` becomes ``FieldError`` at the file key of its field.

    ``keys`` maps domain field names to the file's key names (``soc_initial`` -> ``soc``).
    """
    try:
        return make()
    except ModelError as err:
        key = keys.get(err.field, err.field)
        raise FieldError(fields.sub(key), fields.line_of(key), model_reason(err)) from None



# --- free-form subtrees (handed to an adapter's own config or message reader) --------------

_ISO_DURATION = re.compile(
    r"P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?\Z")


def to_duration(node: Node, path: str) -> timedelta:
    """An ISO-8601 duration as OpenADR writes it (``PT2H``, ``PT15M``, ``P1DT30S``)."""
    text = to_str(node, path)
    match = _ISO_DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise FieldError(path, node_line(node), f"{text[:40]!r} is not an ISO-8601 duration "
                                                "(e.g. PT2H, PT15M, P1DT30S)")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    try:
        return timedelta(**parts)
    except OverflowError:
        raise FieldError(path, node_line(node), f"duration {text[:40]!r} is too long") from None


def plain(node: Node, path: str, *, times: frozenset[str] = frozenset(),
          durations: frozenset[str] = frozenset()) -> Any:
    """A subtree as plain data (dicts, lists, str, int, float, bool, None) for a reader
    that checks it itself; values under a key in ``times`` become UTC datetimes and under
    a key in ``durations`` timedeltas, each checked here with its path and line."""
    if isinstance(node, MappingNode):
        out: dict[str, Any] = {}
        fields = Fields(node, path, None)  # any key: its reader checks
        for key, value in fields.values.items():
            sub = fields.sub(key)
            if key in times and not is_null(value):
                out[key] = to_datetime(value, sub)
            elif key in durations and not is_null(value):
                out[key] = to_duration(value, sub)
            else:
                out[key] = plain(value, sub, times=times, durations=durations)
        return out
    if isinstance(node, SequenceNode):
        return [plain(entry, sub, times=times, durations=durations)
                for sub, entry in items(node, path)]
    if is_null(node):
        return None
    assert isinstance(node, ScalarNode)
    if node.tag == TAG_INT:
        return _yaml_int(node, path)
    if node.tag == TAG_FLOAT:
        return to_float(node, path)
    if node.tag == _BOOL:
        return to_bool(node, path)
    if node.tag in (TAG_STR, _TIMESTAMP):
        return str(node.value)
    raise FieldError(path, node_line(node), f"unsupported value {describe(node)}")


def locate(node: Node, path: str) -> int:
    """The line of the deepest node along dotted ``path`` (``a.b[2].c``) under ``node``."""
    current = node
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if isinstance(current, MappingNode) and not part.startswith("["):
            found = next((v for k, v in current.value
                          if isinstance(k, ScalarNode) and str(k.value) == part), None)
        elif isinstance(current, SequenceNode) and part.startswith("["):
            index = int(part[1:-1])
            found = current.value[index] if index < len(current.value) else None
        else:
            found = None
        if found is None:
            break
        current = found
    return node_line(current)
