"""Safe intake of IEEE 2030.5 / CSIP-AUS XML bodies, and models back to bytes.

A body from a utility server is untrusted.  :func:`parse` checks, in this order: the size
cap (before any parsing), the Content-Type (``application/sep+xml`` with or without
parameters; HTML error pages of proxies are named as such), emptiness, DTDs (refused
outright: no DOCTYPE, no entities, no network), well-formedness, nesting depth, namespaces,
an ``<Error>`` root (raised as :class:`Sep2ServerError` with its reasonCode), the root
element, and finally the envoy-schema model.

Namespaces: envoy-schema hard-codes the CSIP-AUS namespace ``https://csipaus.org/ns/v1.3``;
a document in another variant (``https://csipaus.org/ns`` of CSIP-AUS 1.1a and envoy 1.x,
``http://csipaus.org/ns`` of 1.1, ...) would parse without error but with every CSIP-AUS
element (``opModExpLimW``...) silently ``None``.  Every known variant is therefore rewritten
to the canonical one before the model sees it; an unknown CSIP-like namespace, a CSIP-AUS
element in the wrong namespace and an element without a namespace are errors, so a limit is
never silently dropped.

Every failure is a :class:`Sep2Error` (a ``ValueError``) whose ``field`` names the element
or field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic
from lxml import etree  # type: ignore[import-untyped,unused-ignore]  # no stubs; see below
from pydantic_xml import BaseXmlModel

# lxml ships no type stubs (lxml-stubs is not installed), so ``etree`` is Any here and every
# lxml value is handled as Any; ``unused-ignore`` keeps the import valid should a project-wide
# mypy override for lxml appear.

SEP2_NS = "urn:ieee:std:2030.5:ns"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
CSIPAUS_NS = "https://csipaus.org/ns/v1.3"
"""The CSIP-AUS namespace envoy-schema's models expect (every variant is rewritten to it)."""

CSIPAUS_NAMESPACES: Mapping[str, str] = {
    "https://csipaus.org/ns/v1.3": "CSIP-AUS v1.3 (envoy 2.x; envoy-schema's own)",
    "http://csipaus.org/ns/v1.3": "CSIP-AUS v1.3 with an http scheme",
    "https://csipaus.org/ns": "CSIP-AUS v1.1a (envoy 1.x)",
    "http://csipaus.org/ns": "CSIP-AUS v1.1 (before 1.1a changed the scheme to https)",
    "https://csipaus.org/ns/v1.3-beta/storage": "CSIP-AUS v1.3-beta storage extension",
    "http://csipaus.org/ns/v1.3-beta/storage": "CSIP-AUS v1.3-beta storage extension, http",
}
"""Every CSIP-AUS namespace variant known to be in use, and where it comes from."""

CSIPAUS_ELEMENTS = frozenset({
    "opModImpLimW", "opModExpLimW", "opModGenLimW", "opModLoadLimW", "opModStorageTargetW",
    "ConnectionPoint", "ConnectionPointLink", "connectionPointId",
    "doeModesSupported", "doeModesEnabled", "vppModesSupported", "vppModesEnabled", "setMinWh",
})
"""CSIP-AUS element names: outside a CSIP-AUS namespace the models would drop them."""

SEP_XML = "application/sep+xml"
"""The IEEE 2030.5 media type (send it as Content-Type and Accept)."""

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 32  # 2030.5 documents nest about 7 deep; pydantic-xml recurses per level
_XML_MEDIA_TYPES = frozenset({SEP_XML, "application/xml", "text/xml"})
_CSIP_LIKE = re.compile(r"csip", re.IGNORECASE)
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_HTML_START = re.compile(rb"\A(\xef\xbb\xbf)?\s*<(!doctype\s+html|html[\s>])", re.IGNORECASE)
_TITLE = re.compile(rb"<title[^>]*>(.{0,200}?)</title>", re.IGNORECASE | re.DOTALL)

T = TypeVar("T", bound=BaseXmlModel)


class Sep2Error(ValueError):
    """A body, document or model that cannot be accepted; ``field`` names where it is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Sep2ServerError(Sep2Error):
    """The server answered with an ``<Error>`` document (2030.5 reasonCode, optional text)."""

    def __init__(self, reason_code: int, message: str | None,
                 max_retry_duration_s: int | None) -> None:
        text = f"server returned <Error> reasonCode {reason_code}"
        if message:  # untrusted text: one line, bounded, for logs
            flat = " ".join(message.split())
            text += f": {flat[:300]}" + ("..." if len(flat) > 300 else "")
        if max_retry_duration_s is not None:
            text += f" (retry after {max_retry_duration_s} s)"
        super().__init__("Error", text)
        self.reason_code = reason_code
        self.message = message
        self.max_retry_duration_s = max_retry_duration_s


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """A parsed document and the CSIP-AUS namespace variant the server wrote it in."""

    model: T
    csipaus_namespace: str | None


def parse(body: bytes, model: type[T], content_type: str | None = None, *,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> T:
    """Parse an untrusted response body into ``model`` (an envoy-schema class).

    ``content_type`` is the response header as received (``None`` when it was missing).
    Raises :class:`Sep2ServerError` for an ``<Error>`` root (unless ``model`` is envoy-schema's
    ``ErrorResponse``) and :class:`Sep2Error` for everything else that is wrong.
    """
    return parse_document(body, model, content_type, max_body_bytes=max_body_bytes).model


def parse_document(body: bytes, model: type[T], content_type: str | None = None, *,
                   max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Parsed[T]:
    """:func:`parse`, also returning the CSIP-AUS namespace variant the document used."""
    root = _intake(body, content_type, max_body_bytes)
    csipaus_namespace = _normalise_namespaces(root)
    root_ns, root_local = _split(root.tag)
    if root_ns == SEP2_NS and root_local == "Error" and not _is_error_model(model):
        raise _server_error(root)
    expected = _element_name(model)
    if root.tag != expected:
        raise Sep2Error("root", f"expected <{_split(expected)[1]}> ({model.__name__}), "
                                f"got <{root_local}>")
    try:
        parsed = model.from_xml_tree(root)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, root_local) from None
    except Exception as exc:  # an input boundary: whatever the model chokes on is bad input
        raise Sep2Error(root_local, f"cannot be read as {model.__name__}: "
                                    f"{type(exc).__name__}: {exc}") from None
    return Parsed(parsed, csipaus_namespace)


def serialise(model: BaseXmlModel, *, csipaus_namespace: str = CSIPAUS_NS) -> bytes:
    """Bytes of ``model`` for a POST/PUT body, CSIP-AUS elements in ``csipaus_namespace``.

    Servers that speak an older CSIP-AUS version want their own namespace back (envoy 1.x:
    ``https://csipaus.org/ns``); :func:`parse_document` tells which one a server uses.
    """
    if csipaus_namespace not in CSIPAUS_NAMESPACES:
        raise Sep2Error("csipaus_namespace", f"unknown CSIP-AUS namespace {csipaus_namespace!r}; "
                                             f"known: {', '.join(CSIPAUS_NAMESPACES)}")
    try:
        tree = model.to_xml_tree(skip_empty=True, exclude_none=True)
    except Exception as exc:  # pydantic-xml raises several types; the caller needs one
        raise Sep2Error(type(model).__name__, f"cannot be serialised: {exc}") from None
    if csipaus_namespace != CSIPAUS_NS:
        tree = _renamespaced(tree, csipaus_namespace)
    data: bytes = etree.tostring(tree, encoding="utf-8", xml_declaration=False)
    return data


def media_type(content_type: str) -> str:
    """The bare media type of a Content-Type header, lower case, parameters dropped."""
    return content_type.split(";", 1)[0].strip().lower()


# -- intake -------------------------------------------------------------------------------

def _intake(body: bytes, content_type: str | None, max_body_bytes: int) -> Any:
    """Checks before and during parsing; the root element of a safe, well-formed document."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise Sep2Error("body", f"expected bytes, got {type(body).__name__}")
    body = bytes(body)
    if len(body) > max_body_bytes:
        raise Sep2Error("body", f"{len(body)} bytes exceed the cap of {max_body_bytes} bytes")
    if content_type is not None:
        kind = media_type(content_type)
        if kind == "text/html" or kind == "application/xhtml+xml":
            raise Sep2Error("Content-Type", f"{content_type!r}: the server (or a proxy in front "
                                            f"of it) sent an HTML page{_title(body)}, not an "
                                            f"IEEE 2030.5 document")
        if kind not in _XML_MEDIA_TYPES:
            raise Sep2Error("Content-Type", f"{content_type!r} is not an IEEE 2030.5 XML type "
                                            f"(expected {SEP_XML})")
    if not body.strip():
        raise Sep2Error("body", "empty")
    if _HTML_START.match(body):
        raise Sep2Error("body", f"an HTML page{_title(body)}, not an IEEE 2030.5 document")
    if _DOCTYPE.search(body):
        raise Sep2Error("body", "DTDs and entity declarations are refused (<!DOCTYPE>)")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False, remove_comments=True,
                             remove_pis=True, collect_ids=False, recover=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise Sep2Error("body", f"not well-formed XML: {exc}") from None
    except (etree.LxmlError, ValueError) as exc:
        raise Sep2Error("body", f"cannot be parsed as XML: {exc}") from None
    if root is None:
        raise Sep2Error("body", "no root element")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise Sep2Error("body", "DTDs and entity declarations are refused (<!DOCTYPE>)")
    return root


def _title(body: bytes) -> str:
    found = _TITLE.search(body[:4096])
    if not found:
        return ""
    title = " ".join(found.group(1).decode("utf-8", "replace").split())[:80]
    return f" titled {title!r}"


def _split(tag: str) -> tuple[str | None, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def _walk(root: Any) -> Iterator[tuple[Any, str]]:
    """Every element with its path (``DERControlList/DERControl/...``), depth-capped."""
    path: list[str] = []
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if event == "end":
            path.pop()
            continue
        tag = element.tag
        if not isinstance(tag, str):
            raise Sep2Error("/".join(path) or "root", f"unexpected node {tag!r}")
        path.append(_split(tag)[1])
        where = "/".join(path)
        if len(path) > MAX_DEPTH:
            raise Sep2Error(where, f"elements nested deeper than {MAX_DEPTH} levels")
        yield element, where


def _normalise_namespaces(root: Any) -> str | None:
    """Rewrite CSIP-AUS variants to :data:`CSIPAUS_NS` in place; refuse what would be lost.

    Returns the variant the document declares or uses (``None`` if it has no CSIP-AUS part).
    """
    variants: list[str] = []
    for prefix, uri in (root.nsmap or {}).items():
        _check_namespace(uri, f"xmlns:{prefix}" if prefix else "xmlns", variants)
    for element, where in _walk(root):
        namespace, local = _split(element.tag)
        if namespace is None:
            raise Sep2Error(where, f"element <{local}> has no namespace (IEEE 2030.5 elements "
                                   f"are in {SEP2_NS})")
        if _check_namespace(namespace, where, variants):
            if namespace != CSIPAUS_NS:
                element.tag = f"{{{CSIPAUS_NS}}}{local}"
        elif local in CSIPAUS_ELEMENTS:
            raise Sep2Error(where, f"CSIP-AUS element <{local}> in namespace {namespace!r}; "
                                   f"expected a CSIP-AUS namespace such as {CSIPAUS_NS!r} "
                                   f"(refused rather than dropped)")
        if local == "DERControlBase":
            _no_repeats(element, where)
        for name in list(element.attrib):
            attr_ns, attr_local = _split(name)
            if attr_ns is not None and _check_namespace(attr_ns, f"{where}@{attr_local}",
                                                        variants) and attr_ns != CSIPAUS_NS:
                element.attrib[f"{{{CSIPAUS_NS}}}{attr_local}"] = element.attrib.pop(name)
    return variants[0] if variants else None


def _check_namespace(uri: str, where: str, variants: list[str]) -> bool:
    """True for a CSIP-AUS variant (noted); error for an unknown CSIP-like namespace."""
    if uri in CSIPAUS_NAMESPACES:
        if uri not in variants:
            variants.append(uri)
        return True
    if _CSIP_LIKE.search(uri):
        raise Sep2Error(where, f"unknown CSIP-AUS namespace {uri!r}; known: "
                               f"{', '.join(CSIPAUS_NAMESPACES)}")
    return False


def _no_repeats(element: Any, where: str) -> None:
    """A control value given twice (the model would keep one silently) is refused."""
    seen: set[str] = set()
    for child in element:
        if child.tag in seen:
            raise Sep2Error(f"{where}/{_split(child.tag)[1]}", "given more than once")
        seen.add(child.tag)


def _is_error_model(model: type[BaseXmlModel]) -> bool:
    return _element_name(model) == f"{{{SEP2_NS}}}Error"


def _element_name(model: type[BaseXmlModel]) -> str:
    serializer = model.__xml_serializer__
    if serializer is None:
        raise Sep2Error(model.__name__, "is not a complete pydantic-xml model")
    name: str = serializer.element_name
    return name


def _server_error(root: Any) -> Sep2Error:
    """The typed error for an ``<Error>`` document (read by hand: unknown codes must pass)."""
    def text(local: str) -> str | None:
        child = root.find(f"{{{SEP2_NS}}}{local}")
        return None if child is None or child.text is None else str(child.text).strip()

    reason = text("reasonCode")
    if reason is None or not re.fullmatch(r"[0-9]{1,5}", reason):
        return Sep2Error("Error/reasonCode", f"missing or not an integer ({reason!r}); "
                                             f"message {text('message')!r}")
    retry = text("maxRetryDuration")
    retry_s = int(retry) if retry is not None and re.fullmatch(r"[0-9]{1,9}", retry) else None
    return Sep2ServerError(int(reason), text("message"), retry_s)


def _validation_error(exc: pydantic.ValidationError, root_local: str) -> Sep2Error:
    """A pydantic error as a Sep2Error naming the first field (XML names, not Python ones)."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        where = root_local
        for part in error["loc"]:
            if isinstance(part, int):
                where += f"[{part}]"
            else:
                where += "." + str(part).rstrip("_")
        ctx = error.get("ctx") or {}
        message = str(ctx.get("orig", error["msg"]))
        problems.append((where, message))
    if not problems:
        return Sep2Error(root_local, str(exc))
    first_where, first_message = problems[0]
    extra = "; ".join(f"{where}: {message}" for where, message in problems[1:4])
    more = f" (also {extra}" + (", ...)" if len(problems) > 4 else ")") if extra else ""
    return Sep2Error(first_where, f"{first_message}{more}")


def _renamespaced(tree: Any, csipaus_namespace: str) -> Any:
    """A copy of ``tree`` with CSIP-AUS names in ``csipaus_namespace`` (prefix ``csipaus``)."""
    def retag(name: str) -> str:
        namespace, local = _split(name)
        return f"{{{csipaus_namespace}}}{local}" if namespace == CSIPAUS_NS else name

    nsmap = {None: SEP2_NS, "csipaus": csipaus_namespace, "xsi": XSI_NS}
    copy = etree.Element(retag(tree.tag), nsmap=nsmap)
    pending = [(tree, copy)]
    while pending:
        source, target = pending.pop()
        for name, value in source.attrib.items():
            target.set(retag(name), value)
        target.text = source.text
        target.tail = source.tail
        for child in source:
            if isinstance(child.tag, str):
                pending.append((child, etree.SubElement(target, retag(child.tag))))
    return copy
