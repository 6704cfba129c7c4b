"""The 90-8 adapter's object references read from an IEC 61850-6 SCL file (.cid/.icd/.scd).

Public sources disagree on some 90-8 names; the IED's own SCL file says what it serves.
For one IED this picks the logical device holding 90-8 LNs (or the configured ``ldevice`` /
``access_point``), resolves LN data objects through DataTypeTemplates (``ChaPwrLim`` is an
ASG with ``setMag.f`` under FC SP), reads data sets and report control blocks, and proposes
the keys ``config.ied_from_mapping`` reads:

- ``domain``: IED name + LDevice inst (or ``ldName``); ``host``: the access point's IP.
- ``limit``: the DESE's ``ChaPwrLim`` value, ``q``, ``t`` and the multiplier its ``units``
  are set to.  Several DESE: the one ``limit.value`` names, else an error.
- ``schedules``: the configured names select FSCH LNs and the SCL fills in each entry;
  without ``schedules`` every FSCH of the LD, in document order.  ``max_entries`` is the
  count of ``ValASG1..n``.  ``active_schedule``: the one FSCC's ``ActSchdRef``.
- ``publish`` (opt-in: it writes to the IED): DEEV ``Soc``/``DptTm``/``EnAmnt``, DESE
  ``ChaPwrTgt``.
- ``reports``: per group ("limit", "schedules") the first RCB, unbuffered before buffered,
  whose data set holds every reference the group reads; none: the group is polled.

Explicit keys win; a required reference neither gives (or an ambiguous one) is a
``ConfigError`` naming the field.  The file is untrusted: size-capped before parsing, no
DTD, no entities, no network; every fault in it is an :class:`SclError` naming the element
path and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree  # type: ignore[import-untyped,unused-ignore]  # no stubs: Any

from adapters.iec61850.config import FUNCTIONAL_CONSTRAINTS, ConfigError, Ref

SCL_NS = "http://www.iec.ch/61850/2003/SCL"
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # a substation's SCD can be tens of MB; a CID is small
MAX_TYPE_DEPTH = 12  # nesting of SDO / Struct types; deeper (or cyclic) is an error
CLASSES_90_8 = frozenset({"DESE", "DEEV", "DEAO", "DEDO", "FSCH", "FSCC"})
VALUE_PATHS = ("setMag.f", "setMag.i", "setVal", "setTm", "mag.f", "mag.i", "stVal")
"""Where a data object keeps its value, in the order looked for."""
SCL_KEYS = frozenset({"scl", "ied_name", "access_point", "ldevice"})
_REQUIRED = {"limit": ("value",),  # what ied_from_mapping cannot do without, per section
             "schedule": ("state", "priority", "entries", "interval", "start", "value")}
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_VALASG = re.compile(r"^ValASG([1-9][0-9]*)$")
MULTIPLIERS = {"y": -24, "z": -21, "a": -18, "f": -15, "p": -12, "n": -9, "µ": -6, "u": -6,
               "m": -3, "c": -2, "d": -1, "": 0, "da": 1, "h": 2, "k": 3, "M": 6, "G": 9,
               "T": 12, "P": 15, "E": 18, "Z": 21, "Y": 24}
"""IEC 61850-7-3 multiplierKind literals and their powers of ten."""
_LABEL = {"LDevice": "inst", "LNodeType": "id", "DOType": "id", "DAType": "id",
          "EnumType": "id", "FCDA": "doName"}


class SclError(ConfigError):
    """The SCL file is unsafe, malformed or lacks what was asked; ``field`` is the element."""

    def __init__(self, element: str, message: str, *, line: int | None = None,
                 source: str | None = None) -> None:
        where = ", ".join(p for p in (source, None if line is None else f"line {line}") if p)
        super().__init__(element, f"{message} ({where})" if where else message)
        self.line = line
        self.source = source


@dataclass(frozen=True, slots=True)
class Attribute:
    """One data attribute (or Struct) of a data object: path below the DO, FC, bType."""

    path: str
    fc: str
    btype: str


@dataclass(frozen=True, slots=True)
class Member:
    """One FCDA of a data set: ``DESE1.ChaPwrLim.setMag.f`` (or a whole DO) with its FC."""

    path: str
    fc: str

    def covers(self, ref: Ref) -> bool:
        return self.fc == ref.fc and (ref.path == self.path or
                                      ref.path.startswith(self.path + "."))


@dataclass(frozen=True, slots=True)
class ReportControl:
    """A ReportControl element; ``rcb`` is the name the adapter configuration uses."""

    ln: str
    name: str
    buffered: bool
    dataset: str | None
    rpt_id: str | None
    intg_pd_ms: int | None

    @property
    def rcb(self) -> str:
        return f"{self.ln}${'BR' if self.buffered else 'RP'}${self.name}"


@dataclass(frozen=True, slots=True)
class Missing:
    """A reference the SCL cannot give; ``ambiguous``: several LNs fit and none is named."""

    reason: str
    ambiguous: bool = False


def _local(element: Any) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else "#node"


def _label(element: Any) -> str:
    local = _local(element)
    if local in ("LN", "LN0"):
        return f"{local}[{ln_name(element)}]"
    key = element.get(_LABEL.get(local, "name"))
    return f"{local}[{key}]" if key is not None else local


def element_path(element: Any) -> str:
    """``SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/LN[DESE1]``-style path."""
    parts = [_label(e) for e in element.iterancestors()][::-1]
    return "/".join([*parts, _label(element)])


def _error(element: Any, message: str) -> SclError:
    source = element.getroottree().docinfo.URL
    return SclError(element_path(element), message, line=element.sourceline,
                    source=None if source is None else str(source))


def _children(element: Any, local: str) -> Iterator[Any]:
    return iter(element.iterchildren(f"{{{SCL_NS}}}{local}"))


def _child(element: Any, local: str) -> Any:
    return next(_children(element, local), None)


def ln_name(element: Any) -> str:
    """``prefix + lnClass + inst`` (``LLN0`` for LN0)."""
    return f"{element.get('prefix', '')}{element.get('lnClass', '')}{element.get('inst', '')}"


def parse_scl(data: bytes, source: str = "SCL", *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The root ``SCL`` element of ``data``, parsed without DTD, entities or network."""
    if len(data) > max_bytes:
        raise SclError(source, f"{len(data)} bytes exceed the cap of {max_bytes} bytes")
    if _DOCTYPE.search(data):
        raise SclError(source, "DTDs and entity declarations are refused (<!DOCTYPE>)")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False, remove_comments=True,
                             remove_pis=True, collect_ids=False, recover=False)
    try:
        root = etree.fromstring(data, parser, base_url=source)
    except etree.XMLSyntaxError as exc:
        raise SclError(source, f"not well-formed XML: {exc.msg}", line=exc.lineno) from None
    except (etree.LxmlError, ValueError) as exc:
        raise SclError(source, f"cannot be parsed as XML: {exc}") from None
    if root is None:
        raise SclError(source, "no root element")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise SclError(source, "DTDs and entity declarations are refused (<!DOCTYPE>)")
    if root.tag != f"{{{SCL_NS}}}SCL":
        raise _error(root, f"expected the root element SCL in namespace {SCL_NS}, got "
                           f"{root.tag!r}")
    return root


def load_scl(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """``parse_scl`` of a file, size-checked before it is read whole."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SclError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    return parse_scl(data, str(path), max_bytes=max_bytes)


@dataclass
class SclDevice:
    """One logical device of one IED, its LNs, data sets and RCBs; DO types on demand."""

    ied: str
    access_point: str
    ldevice: str
    domain: str
    host: str | None
    nodes: dict[str, Any]  # LN name -> LN/LN0 element, in document order
    templates: dict[str, dict[str, Any]]  # "LNodeType"/"DOType"/"DAType" -> id -> element
    datasets: dict[tuple[str, str], tuple[Member, ...]] = field(default_factory=dict)
    reports: tuple[ReportControl, ...] = ()
    _cache: dict[tuple[str, str], dict[str, Attribute] | None] = field(default_factory=dict)

    def of_class(self, ln_class: str) -> list[str]:
        """The LN names of one class, in document order."""
        return [n for n, e in self.nodes.items() if e.get("lnClass") == ln_class]

    def data_objects(self, ln: str) -> list[str]:
        """The names of the DOs of ``ln``'s LNodeType, in document order."""
        lntype = self._type("LNodeType", self.nodes[ln], "lnType")
        return [str(c.get("name")) for c in _children(lntype, "DO")]

    def attributes(self, ln: str, do: str) -> dict[str, Attribute] | None:
        """The attributes of ``ln.do`` (``do`` may be ``DO.SDO``); None if it has no such DO."""
        key = (ln, do)
        if ln not in self.nodes:
            return None
        if key not in self._cache:
            self._cache[key] = self._resolve(ln, do)
        return self._cache[key]

    def _type(self, kind: str, element: Any, attribute: str) -> Any:
        type_id = element.get(attribute)
        if not type_id:
            raise _error(element, f"has no {attribute}")
        found = self.templates[kind].get(type_id)
        if found is None:
            raise _error(element, f"{attribute} {type_id!r} is not a {kind} in "
                                  "DataTypeTemplates")
        return found

    def _resolve(self, ln: str, do: str) -> dict[str, Attribute] | None:
        node = self.nodes[ln]
        parent = self._type("LNodeType", node, "lnType")
        for depth, name in enumerate(do.split(".")):
            kind = "DO" if depth == 0 else "SDO"
            child = next((c for c in _children(parent, kind) if c.get("name") == name), None)
            if child is None:
                return None
            parent = self._type("DOType", child, "type")
        found: dict[str, Attribute] = {}
        self._flatten(parent, "", None, found, (f"DOType:{parent.get('id')}",))
        return found

    def _flatten(self, type_element: Any, prefix: str, fc: str | None,
                 found: dict[str, Attribute], seen: tuple[str, ...]) -> None:
        if len(seen) > MAX_TYPE_DEPTH:
            raise _error(type_element, f"types nest deeper than {MAX_TYPE_DEPTH} levels")
        for child in type_element.iterchildren():
            local = _local(child)
            if local not in ("DA", "BDA", "SDO"):
                continue
            name = child.get("name")
            if not name or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise _error(child, f"name {name!r} is not a data attribute name")
            path = f"{prefix}{name}"
            if local == "SDO":
                self._descend(self._type("DOType", child, "type"), path, None, found, seen)
                continue
            own_fc = child.get("fc") if local == "DA" else fc
            if own_fc not in FUNCTIONAL_CONSTRAINTS:
                raise _error(child, f"unknown functional constraint fc={own_fc!r}")
            btype = child.get("bType")
            if not btype:
                raise _error(child, "has no bType")
            found[path] = Attribute(path, own_fc, btype)
            if btype == "Struct":
                self._descend(self._type("DAType", child, "type"), path, own_fc, found, seen)

    def _descend(self, type_element: Any, path: str, fc: str | None,
                 found: dict[str, Attribute], seen: tuple[str, ...]) -> None:
        key = f"{_local(type_element)}:{type_element.get('id')}"
        if key in seen:
            raise _error(type_element, f"type {type_element.get('id')!r} contains itself")
        self._flatten(type_element, path + ".", fc, found, (*seen, key))


def _index_templates(root: Any) -> dict[str, dict[str, Any]]:
    templates: dict[str, dict[str, Any]] = {"LNodeType": {}, "DOType": {}, "DAType": {}}
    section = _child(root, "DataTypeTemplates")
    for kind, table in templates.items():
        for element in () if section is None else _children(section, kind):
            type_id = element.get("id")
            if type_id in table:
                raise _error(element, f"{kind} id {type_id!r} is defined twice")
            table[type_id] = element
    return templates


def _select(root: Any, ied_name: str, access_point: str | None,
            ldevice: str | None) -> tuple[Any, Any]:
    ieds = list(_children(root, "IED"))
    ied = next((e for e in ieds if e.get("name") == ied_name), None)
    if ied is None:
        names = ", ".join(repr(e.get("name")) for e in ieds) or "none"
        raise _error(root, f"no IED named {ied_name!r} (IEDs in the file: {names})")
    found: list[tuple[Any, Any]] = []
    points = [ap for ap in _children(ied, "AccessPoint")
              if access_point is None or ap.get("name") == access_point]
    if not points:
        raise _error(ied, f"no AccessPoint named {access_point!r}")
    for ap in points:
        server = _child(ap, "Server")
        for ld in () if server is None else _children(server, "LDevice"):
            if ldevice is None or ld.get("inst") == ldevice:
                found.append((ap, ld))
    if ldevice is None:
        found = [(ap, ld) for ap, ld in found
                 if any(e.get("lnClass") in CLASSES_90_8 for e in _children(ld, "LN"))]
    if not found:
        what = f"LDevice inst={ldevice!r}" if ldevice is not None else \
            "LDevice with a 90-8 logical node (" + ", ".join(sorted(CLASSES_90_8)) + ")"
        raise _error(ied, f"has no {what}")
    if len(found) > 1:
        names = ", ".join(f"{ap.get('name')}/{ld.get('inst')}" for ap, ld in found)
        raise _error(ied, f"several logical devices fit ({names}): configure access_point "
                          "and ldevice")
    return found[0]


def _host(root: Any, ied_name: str, access_point: str) -> str | None:
    communication = _child(root, "Communication")
    for subnet in () if communication is None else _children(communication, "SubNetwork"):
        for cap in _children(subnet, "ConnectedAP"):
            if cap.get("iedName") == ied_name and cap.get("apName") == access_point:
                address = _child(cap, "Address")
                for p in () if address is None else _children(address, "P"):
                    if p.get("type") == "IP" and (p.text or "").strip():
                        return str(p.text).strip()
    return None


def read_device(root: Any, ied_name: str, *, access_point: str | None = None,
                ldevice: str | None = None) -> SclDevice:
    """The logical device of ``ied_name`` holding the 90-8 LNs (or the one named)."""
    ap, ld = _select(root, ied_name, access_point, ldevice)
    inst = ld.get("inst") or ""
    nodes: dict[str, Any] = {}
    for element in ld.iterchildren(f"{{{SCL_NS}}}LN0", f"{{{SCL_NS}}}LN"):
        name = ln_name(element)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise _error(element, f"{name!r} is not a logical node name")
        if name in nodes:
            raise _error(element, f"logical node {name} appears twice")
        nodes[name] = element
    device = SclDevice(ied=ied_name, access_point=str(ap.get("name")), ldevice=inst,
                       domain=ld.get("ldName") or f"{ied_name}{inst}",
                       host=_host(root, ied_name, str(ap.get("name"))), nodes=nodes,
                       templates=_index_templates(root))
    reports: list[ReportControl] = []
    for name, element in nodes.items():
        for ds in _children(element, "DataSet"):
            device.datasets[(name, str(ds.get("name")))] = tuple(
                m for m in (_member(device, f) for f in _children(ds, "FCDA")) if m)
        for rc in _children(element, "ReportControl"):
            reports.append(_report(device, name, rc))
    device.reports = tuple(reports)
    return device


def _member(device: SclDevice, fcda: Any) -> Member | None:
    """A checked FCDA of this logical device (None: it names another LD)."""
    if (fcda.get("ldInst") or device.ldevice) != device.ldevice:
        return None
    ln = f"{fcda.get('prefix', '')}{fcda.get('lnClass', '')}{fcda.get('lnInst', '')}"
    if ln not in device.nodes:
        raise _error(fcda, f"no logical node {ln} in LDevice {device.ldevice}")
    do, da, fc = fcda.get("doName") or "", fcda.get("daName"), fcda.get("fc")
    attrs = device.attributes(ln, do) if do else None
    if attrs is None:
        raise _error(fcda, f"{ln} has no data object {do!r}")
    if fc not in FUNCTIONAL_CONSTRAINTS:
        raise _error(fcda, f"unknown functional constraint fc={fc!r}")
    if da:
        if da not in attrs:
            raise _error(fcda, f"{ln}.{do} has no data attribute {da!r}")
        if attrs[da].fc != fc:
            raise _error(fcda, f"wrong FC: {ln}.{do}.{da} is {attrs[da].fc} in "
                               f"DataTypeTemplates, the FCDA says {fc}")
    elif all(a.fc != fc for a in attrs.values()):
        raise _error(fcda, f"wrong FC: {ln}.{do} has no attribute with FC {fc}")
    return Member(".".join(p for p in (ln, do, da) if p), fc)


def _report(device: SclDevice, ln: str, rc: Any) -> ReportControl:
    name = rc.get("name") or ""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise _error(rc, f"name {name!r} is not a report control block name")
    dataset = rc.get("datSet") or None
    if dataset is not None and (ln, dataset) not in device.datasets:
        raise _error(rc, f"datSet {dataset!r} is not a DataSet of {ln}")
    buffered = rc.get("buffered", "false")
    if buffered not in ("true", "false", "1", "0"):
        raise _error(rc, f"buffered={buffered!r} is not a boolean")
    intg = rc.get("intgPd")
    if intg is not None and not re.fullmatch(r"[0-9]{1,10}", intg):
        raise _error(rc, f"intgPd={intg!r} is not a number of milliseconds")
    return ReportControl(ln, name, buffered in ("true", "1"), dataset, rc.get("rptID"),
                         None if intg is None else int(intg))


# -- the proposal -----------------------------------------------------------------------------

Proposed = str | None | Missing


def _value(device: SclDevice, ln: str, do: str, *, paths: Sequence[str] = VALUE_PATHS
           ) -> Proposed:
    """``ln.do.<value attribute>[FC]``, or why the SCL cannot give it."""
    if ln not in device.nodes:
        return Missing(f"LDevice {device.ldevice} has no logical node {ln} in the SCL")
    attrs = device.attributes(ln, do)
    if attrs is None:
        return Missing(f"{ln} has no data object {do} in the SCL")
    for path in paths:
        if path in attrs and attrs[path].btype != "Struct":
            return _ref(device, ln, f"{do}.{path}", attrs[path].fc)
    return Missing(f"{ln}.{do} has none of {', '.join(paths)} in the SCL")


def _ref(device: SclDevice, ln: str, path: str, fc: str) -> str:
    text = f"{ln}.{path}[{fc}]"
    try:
        Ref.parse(text, "scl")
    except ConfigError:
        raise _error(device.nodes[ln], f"{text!r} is not a usable object reference") from None
    return text


def _optional(device: SclDevice, ln: str, do: str, da: str) -> Proposed:
    attrs = device.attributes(ln, do) or {}
    return _ref(device, ln, f"{do}.{da}", attrs[da].fc) if da in attrs else None


def _single(device: SclDevice, ln_class: str) -> str | Missing:
    names = device.of_class(ln_class)
    if len(names) == 1:
        return names[0]
    if not names:
        return Missing(f"LDevice {device.ldevice} has no {ln_class} logical node")
    return Missing(f"LDevice {device.ldevice} has several {ln_class} logical nodes "
                   f"({', '.join(names)}) and the configuration names none", ambiguous=True)


def _instance_value(device: SclDevice, ln: str, path: str) -> tuple[str, Any] | None:
    """The ``Val`` the SCL sets for ``ln``'s ``DO.SDI...DAI`` (DOI/SDI/DAI), with its DAI."""
    node, *names = [device.nodes[ln], *path.split(".")]
    for depth, name in enumerate(names):
        kind = "DOI" if depth == 0 else "DAI" if depth == len(names) - 1 else "SDI"
        node = next((c for c in _children(node, kind) if c.get("name") == name), None)
        if node is None:
            return None
    val = _child(node, "Val")
    return None if val is None else ((val.text or "").strip(), node)


def unit_multiplier(device: SclDevice, ln: str, do: str) -> int | None:
    """The power of ten of ``ln.do``'s unit as the SCL sets it (None: not set); a unit
    other than W is an error, since the adapter reads powers in W x 10^multiplier."""
    if ln not in device.nodes:
        return None
    unit = _instance_value(device, ln, f"{do}.units.SIUnit")
    if unit is not None and unit[0] not in ("W", "62"):
        raise _error(unit[1], f"{ln}.{do} is in {unit[0]!r}, not W")
    found = _instance_value(device, ln, f"{do}.units.multiplier")
    if found is None:
        return None
    text, dai = found
    if text in MULTIPLIERS:
        return MULTIPLIERS[text]
    if re.fullmatch(r"-?[0-9]{1,2}", text) and int(text) in MULTIPLIERS.values():
        return int(text)
    raise _error(dai, f"multiplier {text!r} is not an SI multiplier (k, M, ... or 3, 6, ...)")


def _with_multiplier(refs: dict[str, Any], device: SclDevice, ln: str, do: str
                     ) -> dict[str, Any]:
    multiplier = unit_multiplier(device, ln, do)
    return refs if multiplier is None else refs | {"multiplier": multiplier}


def limit_refs(device: SclDevice, ln: str | Missing) -> dict[str, Proposed | int]:
    """``limit.value/quality/time`` of ``ln.ChaPwrLim`` (and ``multiplier`` if set)."""
    if isinstance(ln, Missing):
        return {"value": ln, "quality": ln, "time": ln}
    return _with_multiplier({"value": _value(device, ln, "ChaPwrLim"),
                             "quality": _optional(device, ln, "ChaPwrLim", "q"),
                             "time": _optional(device, ln, "ChaPwrLim", "t")},
                            device, ln, "ChaPwrLim")


def schedule_refs(device: SclDevice, ln: str) -> dict[str, Proposed | int]:
    """The keys of one ``schedules`` entry for the FSCH ``ln``."""
    if ln not in device.nodes or device.nodes[ln].get("lnClass") != "FSCH":
        gone = Missing(f"{ln} is not an FSCH logical node of LDevice {device.ldevice}")
        missing: dict[str, Proposed | int] = {"name": ln, "state_quality": None}
        for key in _REQUIRED["schedule"]:
            missing[key] = gone
        return missing
    found: dict[str, Proposed | int] = {
        "name": ln, "state": _value(device, ln, "SchdSt", paths=("stVal",)),
        "state_quality": _optional(device, ln, "SchdSt", "q"),
        "priority": _value(device, ln, "SchdPrio"), "entries": _value(device, ln, "NumEntr"),
        "interval": _value(device, ln, "SchdIntv"), "start": _value(device, ln, "StrTm")}
    numbers = sorted(int(m[1]) for do in device.data_objects(ln) if (m := _VALASG.match(do)))
    count = next((i for i, n in enumerate(numbers, start=1) if n != i), len(numbers) + 1) - 1
    first = _value(device, ln, "ValASG1", paths=("setMag.f", "setMag.i"))
    if isinstance(first, str) and count:
        template = first.replace(f"{ln}.ValASG1.", f"{ln}.ValASG{{n}}.", 1)
        for n in range(2, count + 1):  # every entry has ValASG1's attribute and FC
            if _value(device, ln, f"ValASG{n}", paths=("setMag.f", "setMag.i")) != \
                    template.replace("{n}", str(n)):
                raise _error(device.nodes[ln], f"ValASG{n} differs in type from ValASG1")
        found |= _with_multiplier({"value": template, "max_entries": count}, device, ln,
                                  "ValASG1")
    else:
        found["value"] = first if isinstance(first, Missing) else Missing(
            f"{ln} has no ValASG1")
    return found


def publish_refs(device: SclDevice, dese: str | Missing) -> dict[str, Proposed | int]:
    """``publish``: DEEV's Soc, DptTm (INT32 only: the client cannot write a UtcTime),
    EnAmnt and the DESE's ChaPwrTgt."""
    deev = _single(device, "DEEV")

    def of(ln: str | Missing, do: str, paths: Sequence[str] = VALUE_PATHS) -> Proposed:
        return ln if isinstance(ln, Missing) else _value(device, ln, do, paths=paths)

    departure = of(deev, "DptTm", ("setVal",))
    if isinstance(departure, str) and not isinstance(deev, Missing) and \
            (device.attributes(deev, "DptTm") or {})["setVal"].btype not in ("INT32", "INT64"):
        departure = Missing(f"{deev}.DptTm.setVal is not an integer (written as seconds)")
    found: dict[str, Proposed | int] = {
        "soc": of(deev, "Soc"), "departure": departure, "energy_requested": of(deev, "EnAmnt"),
        "power_target": of(dese, "ChaPwrTgt")}
    return found if isinstance(dese, Missing) else _with_multiplier(found, device, dese,
                                                                    "ChaPwrTgt")


def report_refs(device: SclDevice, groups: Mapping[str, Sequence[Ref]]) -> list[dict[str, Any]]:
    """One RCB per group whose data set holds every reference of the group (unbuffered
    first: the adapter re-reads on reconnect, buffered history only repeats itself)."""
    chosen: dict[str, list[str]] = {}
    ranked = sorted(device.reports, key=lambda r: r.buffered)
    for group, refs in groups.items():
        for rc in ranked:
            members = device.datasets.get((rc.ln, rc.dataset or ""), ())
            if refs and all(any(m.covers(ref) for m in members) for ref in refs):
                chosen.setdefault(rc.rcb, []).append(group)
                break
    return [{"rcb": rc.rcb, "covers": chosen[rc.rcb]} for rc in device.reports
            if rc.rcb in chosen]


def propose(device: SclDevice) -> dict[str, Any]:
    """Everything the SCL offers in the keys of ``ied_from_mapping`` (a ``Missing`` where it
    cannot tell), with no configuration laid over it: for inspection and tests."""
    dese = _single(device, "DESE")
    fscc = _single(device, "FSCC")
    found: dict[str, Any] = {
        "domain": device.domain, "host": device.host, "limit": limit_refs(device, dese),
        "schedules": [schedule_refs(device, n) for n in device.of_class("FSCH")],
        "active_schedule": fscc if isinstance(fscc, Missing) else _value(
            device, fscc, "ActSchdRef", paths=("stVal",)),
        "publish": publish_refs(device, dese)}
    found["reports"] = _proposed_reports(device, found, "scl")
    return found


# -- laid under a configuration ---------------------------------------------------------------

def _fill(proposed: Mapping[str, Any], given: Mapping[str, Any], required: Sequence[str],
          prefix: str) -> dict[str, Any]:
    """``given`` over ``proposed``; a Missing left is an error if required or ambiguous."""
    merged: dict[str, Any] = {}
    for key, value in proposed.items():
        if key in given:
            continue
        if isinstance(value, Missing):
            if key in required or value.ambiguous:
                raise ConfigError(f"{prefix}.{key}", f"not configured, and the SCL cannot "
                                                     f"give it: {value.reason}")
            value = None
        merged[key] = value
    return merged | dict(given)


def _ln_of(given: Mapping[str, Any], key: str) -> str | None:
    text = given.get(key)
    return text.split(".", 1)[0] if isinstance(text, str) and "." in text else None


def overlay(device: SclDevice, data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` (one IED's configuration) with what it leaves out taken from ``device``."""
    out = {k: v for k, v in data.items() if k not in SCL_KEYS}
    out.setdefault("domain", device.domain)
    if device.host is not None:
        out.setdefault("host", device.host)
    given_limit = data.get("limit", {}) if "limit" in data else None
    dese: str | Missing = _single(device, "DESE")
    if isinstance(given_limit, Mapping):
        dese = _ln_of(given_limit, "value") or dese
        out["limit"] = _fill(limit_refs(device, dese), given_limit, _REQUIRED["limit"],
                             f"{prefix}.limit")
    elif "limit" not in data and any(device.attributes(n, "ChaPwrLim") is not None
                                     for n in device.of_class("DESE")):
        out["limit"] = _fill(limit_refs(device, dese), {}, _REQUIRED["limit"],
                             f"{prefix}.limit")
    raw = data.get("schedules")
    if raw is None:
        raw = device.of_class("FSCH")
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        schedules = []
        for i, item in enumerate(raw):
            given = {"name": item} if isinstance(item, str) else item
            if not isinstance(given, Mapping) or not isinstance(given.get("name"), str):
                schedules.append(item)  # ied_from_mapping names the fault
                continue
            schedules.append(_fill(schedule_refs(device, given["name"]), given,
                                   _REQUIRED["schedule"], f"{prefix}.schedules[{i}]"))
        out["schedules"] = schedules
        if schedules and "active_schedule" not in data:
            fscc = _single(device, "FSCC")
            active = {"active_schedule": fscc if isinstance(fscc, Missing) else
                      _value(device, fscc, "ActSchdRef", paths=("stVal",))}
            out |= _fill(active, {}, (), prefix)
    if isinstance(data.get("publish"), Mapping):  # opt-in: publishing writes to the IED
        out["publish"] = _fill(publish_refs(device, dese), data["publish"], (),
                               f"{prefix}.publish")
    if "reports" not in data:
        out["reports"] = _proposed_reports(device, out, prefix)
    return out


def _groups(data: Mapping[str, Any], prefix: str) -> dict[str, list[Ref]]:
    """The references each group reads (as the client does), to match data sets against."""
    def refs(items: Mapping[str, Any], keys: Sequence[str]) -> list[Ref]:
        return [Ref.parse(items[k], prefix) for k in keys if isinstance(items.get(k), str)]

    groups: dict[str, list[Ref]] = {}
    limit = data.get("limit")
    if isinstance(limit, Mapping) and isinstance(limit.get("value"), str):
        groups["limit"] = refs(limit, ("value", "quality", "time"))
    schedules: list[Ref] = []
    for item in data.get("schedules") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("value"), str):
            return groups  # left to ied_from_mapping to refuse
        schedules += refs(item, ("state", "state_quality", "priority", "entries", "interval",
                                 "start"))
        count = item.get("max_entries", 96)
        schedules += [Ref.parse(item["value"].replace("{n}", str(n)), f"{prefix}.value")
                      for n in range(1, (count if isinstance(count, int) else 0) + 1)]
    if schedules:
        groups["schedules"] = schedules + refs(data, ("active_schedule",))
    return groups


def _proposed_reports(device: SclDevice, data: Mapping[str, Any], prefix: str
                      ) -> list[dict[str, Any]]:
    try:
        groups = _groups(data, prefix)
    except ConfigError:  # a malformed configured reference: ied_from_mapping names its field
        return []
    return report_refs(device, groups)


def with_scl_references(data: Mapping[str, Any], prefix: str,
                        base_dir: Path | None = None) -> dict[str, Any]:
    """The IED configuration ``data`` completed from its ``scl`` file (``ied_name``, optional
    ``access_point`` and ``ldevice``); a relative path is taken from ``base_dir``."""
    scl, ied_name = data.get("scl"), data.get("ied_name")
    if not isinstance(scl, str) or not scl.strip():
        raise ConfigError(f"{prefix}.scl", "expected the path of an SCL file (.cid/.icd/.scd)")
    if not isinstance(ied_name, str) or not ied_name.strip():
        raise ConfigError(f"{prefix}.ied_name", "the IED's name in the SCL file is required "
                                                "with scl")
    for key in ("access_point", "ldevice"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{prefix}.{key}", f"expected a string, got {data[key]!r}")
    path = Path(scl)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        device = read_device(load_scl(path), ied_name, access_point=data.get("access_point"),
                             ldevice=data.get("ldevice"))
        return overlay(device, data, prefix)
    except SclError as exc:
        raise ConfigError(f"{prefix}.scl", str(exc)) from exc
