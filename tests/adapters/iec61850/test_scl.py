"""References from an SCL (CID) file: the libiec61850 peer's model, overrides, bad files."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.iec61850.config import ConfigError, IedConfig, Ref, from_mapping, ied_from_mapping
from adapters.iec61850.scl import (
    Attribute,
    Member,
    SclDevice,
    SclError,
    load_scl,
    overlay,
    parse_scl,
    propose,
    read_device,
)
from tests.adapters.iec61850.conftest import (
    DOMAIN,
    ENTRIES,
    RecordingSink,
    libiec_config,
    running,
    set_active,
    set_schedule,
    until,
)
from tests.peers.availability import missing_peer
from tests.peers.iec61850.process import Peer

CID = Path(__file__).parents[2] / "peers" / "iec61850" / "gateway.cid"
TEXT = CID.read_text()
# what libiec_config sets besides references (the SCL cannot know these)
SETTINGS: dict[str, Any] = {
    "name": "gw1", "node_id": "site-a", "connect_timeout_s": 1.0, "request_timeout_s": 0.5,
    "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "integrity_period_s": 0.3,
    "poll_interval_s": 0.3, "ttl_s": 2.0, "max_age_s": 30.0, "max_future_s": 5.0,
    "max_power_kw": 100.0}


def cid_config(port: int, **overrides: Any) -> IedConfig:
    """The peer's configuration with every reference from the CID."""
    return ied_from_mapping({"scl": str(CID), "ied_name": "GW", "port": port, "publish": {},
                             **SETTINGS, **overrides})


def mutated(old: str, new: str, text: str = TEXT) -> bytes:
    """The CID with one edit (which must apply)."""
    assert old in text, old
    return text.replace(old, new, 1).encode()


def device_of(data: bytes, **where: Any) -> SclDevice:
    return read_device(parse_scl(data, "gateway.cid"), "GW", **where)


def line_of(needle: str, text: str = TEXT) -> int:
    return text[:text.index(needle)].count("\n") + 1


# -- the CID is the libiec61850 peer's model -------------------------------------------------

def _libiec_model() -> Any:
    if importlib.util.find_spec("pyiec61850") is None:
        missing_peer("pyiec61850-ng (libiec61850 peer) is not installed")
    from tests.peers.iec61850 import libiec_server
    return libiec_server


def _served(server: Any) -> tuple[set[tuple[str, str, str, str]], dict[str, list[Member]],
                                   list[tuple[str, str, bool, str, int]]]:
    """Leaves (LN, DO, DA path, FC, bType), data sets and RCBs of the peer's model text."""
    lib = server.lib
    fcs = {getattr(lib, f"IEC61850_FC_{fc}"): fc for fc in ("ST", "MX", "SP", "CF", "DC")}
    btypes = {server.T_BOOL: "BOOLEAN", server.T_INT32: "INT32", server.T_FLOAT32: "FLOAT32",
              server.T_ENUM: "Enum", server.T_VS129: "VisString129",
              server.T_TIME: "Timestamp", server.T_QUALITY: "Quality",
              server.T_STRUCT: "Struct"}
    leaves: set[tuple[str, str, str, str]] = set()
    datasets: dict[str, list[Member]] = {}
    reports: list[tuple[str, str, bool, str, int]] = []
    stack: list[str] = []
    for line in server.model_text(ENTRIES, 500).splitlines():
        if line == "}":
            stack.pop()
        elif found := re.fullmatch(r"(MODEL|LD|LN|DS)\((\w+)\)\{", line):
            stack.append(found[2])
            if found[1] == "DS":
                datasets[found[2]] = []
        elif found := re.fullmatch(r"DO\((\w+) 0\)\{", line):
            stack.append(found[1])
        elif found := re.fullmatch(r"DA\((\w+) 0 (\d+) (\d+) \d+ 0\)([{;])", line):
            ln, do, *path = stack[2:]
            da = ".".join([*path, found[1]])
            leaves.add((f"{ln}.{do}.{da}", fcs[int(found[3])], btypes[int(found[2])], ""))
            if found[4] == "{":
                stack.append(found[1])
        elif found := re.fullmatch(r"DE\((\w+)\$(\w\w)\$([\w$]+)\);", line):
            datasets[stack[-1]].append(Member(f"{found[1]}.{found[3].replace('$', '.')}",
                                              found[2]))
        elif found := re.fullmatch(r"RC\((\w+) (\w+) ([01]) (\w+) 1 \d+ \d+ 0 (\d+)\);", line):
            reports.append((found[1], found[2], found[3] == "1", found[4], int(found[5])))
        else:
            raise AssertionError(f"model line not understood: {line!r}")
    return leaves, datasets, reports


def test_cid_describes_the_libiec61850_peer_exactly() -> None:
    leaves, datasets, reports = _served(_libiec_model())
    device = read_device(load_scl(CID), "GW")
    described = {(f"{ln}.{do}.{a.path}", a.fc, a.btype, "")
                 for ln in device.nodes for do in device.data_objects(ln)
                 for a in (device.attributes(ln, do) or {}).values()}
    assert described == leaves
    assert {ds: list(members) for (_, ds), members in device.datasets.items()} == datasets
    assert [(r.name, r.rpt_id, r.buffered, r.dataset, r.intg_pd_ms)
            for r in device.reports] == reports
    assert device.domain == DOMAIN


def test_references_equal_the_hand_written_configuration() -> None:
    assert cid_config(10102) == libiec_config(10102)


def test_the_scl_offers_what_the_adapter_reads() -> None:
    found = propose(read_device(load_scl(CID), "GW"))
    assert found["limit"] == {"value": "DESE1.ChaPwrLim.setMag.f[SP]",
                              "quality": "DESE1.ChaPwrLim.q[ST]", "time": "DESE1.ChaPwrLim.t[ST]"}
    assert [(s["name"], s["max_entries"], s["value"]) for s in found["schedules"]] == [
        ("FSCH1", ENTRIES, "FSCH1.ValASG{n}.setMag.f[SP]"),
        ("FSCH2", ENTRIES, "FSCH2.ValASG{n}.setMag.f[SP]")]
    # the buffered brcbLimits01 covers the limit too: the unbuffered one is preferred
    assert found["reports"] == [{"rcb": "LLN0$RP$urcbLimits01", "covers": ["limit"]},
                                {"rcb": "LLN0$RP$urcbSchedules01", "covers": ["schedules"]}]


def test_adapter_configured_from_the_cid_reads_limit_and_schedule(libiec: Peer) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    set_schedule(libiec, "FSCH2", state=4, priority=10, start_ms=int(start.timestamp()) * 1000,
                 interval_s=900, values_w=[8000, 6000])
    set_active(libiec, f"{DOMAIN}/FSCH2")
    cfg = cid_config(libiec.port)
    limit, schedules = cfg.scope_limit, cfg.scope_schedules
    sink = RecordingSink()

    async def body() -> None:
        async with running(cfg, sink) as adapter:
            await until(lambda: sink.limit_kw(limit) == 11.0 and schedules in sink.published)
            assert adapter.connected.is_set()
        windows = [(c.start, c.end, c.import_max_kw) for c in sink.published[schedules]]
        step = timedelta(seconds=900)
        assert windows == [(start, start + step, 8.0), (start + step, start + 2 * step, 6.0)]

    asyncio.run(body())


# -- configuration over the SCL -----------------------------------------------------------------

def test_explicit_keys_override_the_scl() -> None:
    cfg = cid_config(102, domain="OTHER", host="10.0.0.7", schedules=["FSCH2"], reports=[],
                     limit={"quality": "DESE1.ChaPwrLim.q[MX]"}, publish={"soc": None})
    assert (cfg.domain, cfg.host, cfg.reports) == ("OTHER", "10.0.0.7", ())
    assert cfg.limit is not None and cfg.limit.quality == Ref("DESE1.ChaPwrLim.q", "MX")
    assert cfg.limit.value == Ref("DESE1.ChaPwrLim.setMag.f", "SP")
    assert [s.name for s in cfg.schedules] == ["FSCH2"]
    assert cfg.schedules[0].start == Ref("FSCH2.StrTm.setTm", "SP")
    assert cfg.publish is not None and cfg.publish.soc is None
    assert cfg.publish.departure == Ref("DEEV1.DptTm.setVal", "SP")


def test_without_publish_nothing_is_written_back() -> None:
    data = {"scl": str(CID), "ied_name": "GW", **SETTINGS}
    assert ied_from_mapping(data).publish is None


def test_one_report_per_group_follows_the_configured_schedules() -> None:
    # the Schedules data set covers FSCH2 alone too, but not nine FSCH1 entries (it has 8)
    cfg = cid_config(102, schedules=["FSCH2"])
    assert [(r.rcb, r.covers) for r in cfg.reports] == [
        ("LLN0$RP$urcbLimits01", ("limit",)), ("LLN0$RP$urcbSchedules01", ("schedules",))]
    cfg = cid_config(102, schedules=[{"name": "FSCH1", "max_entries": ENTRIES + 1}])
    assert [(r.rcb, r.covers) for r in cfg.reports] == [("LLN0$RP$urcbLimits01", ("limit",))]


def test_relative_scl_path_is_taken_from_the_config_folder() -> None:
    cfg = from_mapping({"ieds": [{"scl": CID.name, "ied_name": "GW", **SETTINGS}]},
                       base_dir=CID.parent)
    assert cfg.ieds[0].domain == DOMAIN
    with pytest.raises(ConfigError) as caught:
        from_mapping({"ieds": [{"scl": CID.name, "ied_name": "GW", **SETTINGS}]},
                     base_dir=CID.parent / "nowhere")
    assert caught.value.field == "ieds[0].scl" and "cannot be read" in str(caught.value)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"ied_name": None}, "ied.ied_name", "required"),
    ({"ied_name": "GW9"}, "ied.scl", "no IED named 'GW9'"),
    ({"ldevice": "EVSE9"}, "ied.scl", "has no LDevice inst='EVSE9'"),
    ({"access_point": "AP9"}, "ied.scl", "no AccessPoint named 'AP9'"),
    ({"schedules": ["FSCH3"]}, "ied.schedules[0].state",
     "FSCH3 is not an FSCH logical node of LDevice EVSE1"),
    ({"schedules": ["DESE1"]}, "ied.schedules[0].state", "DESE1 is not an FSCH"),
    ({"limit": {"value": "DESE9.ChaPwrLim.setMag.f[SP]"}, "schedules": ["FSCH9"]},
     "ied.schedules[0].state", "FSCH9"),
])
def test_what_neither_gives_names_the_field(change: dict[str, Any], field: str,
                                             words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cid_config(102, **change)
    assert caught.value.field == field and words in str(caught.value)


def test_limit_of_an_ln_the_scl_lacks_keeps_only_configured_references() -> None:
    cfg = cid_config(102, limit={"value": "DESE9.ChaPwrLim.setMag.f[SP]"})
    assert cfg.limit is not None and (cfg.limit.quality, cfg.limit.time) == (None, None)


def test_several_lns_of_a_class_must_be_named() -> None:
    two = mutated('<LN prefix="" lnClass="DESE" inst="1" lnType="DESE_GW"/>',
                  '<LN prefix="" lnClass="DESE" inst="1" lnType="DESE_GW"/>'
                  '<LN prefix="" lnClass="DESE" inst="2" lnType="DESE_GW"/>')
    device = device_of(two)
    with pytest.raises(ConfigError) as caught:
        overlay(device, SETTINGS, "ied")
    assert caught.value.field == "ied.limit.value"
    assert "several DESE logical nodes (DESE1, DESE2)" in str(caught.value)
    chosen = overlay(device, {**SETTINGS, "limit": {"value": "DESE2.ChaPwrLim.setMag.f[SP]"},
                              "publish": {}}, "ied")
    assert chosen["limit"]["quality"] == "DESE2.ChaPwrLim.q[ST]"
    assert chosen["publish"]["power_target"] == "DESE2.ChaPwrTgt.setMag.f[SP]"


def test_several_logical_devices_need_ldevice() -> None:
    ld = TEXT[TEXT.index('<LDevice inst="EVSE1">'):TEXT.index("</LDevice>") + len("</LDevice>")]
    two = mutated(ld, ld + ld.replace("EVSE1", "EVSE2")).decode()
    with pytest.raises(SclError) as caught:
        device_of(two.encode())
    assert caught.value.field == "SCL/IED[GW]" and "several logical devices fit (AP1/EVSE1, " \
        "AP1/EVSE2): configure access_point and ldevice" in str(caught.value)
    assert device_of(two.encode(), ldevice="EVSE2").domain == "GWEVSE2"


def test_missing_required_reference_names_the_field() -> None:
    no_setmag = mutated('<DOType id="ASG_LIM" cdc="ASG">\n      <DA name="setMag" '
                        'bType="Struct" type="AnalogueValue_F" fc="SP" dchg="true"/>',
                        '<DOType id="ASG_LIM" cdc="ASG">')
    no_setmag = no_setmag.replace(b'<FCDA ldInst="EVSE1" prefix="" lnClass="DESE" lnInst="1" '
                                  b'doName="ChaPwrLim" daName="setMag.f" fc="SP"/>', b"")
    with pytest.raises(ConfigError) as caught:
        overlay(device_of(no_setmag), SETTINGS, "ied")
    assert caught.value.field == "ied.limit.value"
    assert "DESE1.ChaPwrLim has none of setMag.f" in str(caught.value)
    no_strtm = mutated('<DO name="StrTm" type="TSG_SP"/>', "").replace(
        b'doName="StrTm"', b'doName="SchdIntv"').replace(b'daName="setTm"', b'daName="setVal"')
    with pytest.raises(ConfigError) as caught:
        overlay(device_of(no_strtm), SETTINGS, "ied")
    assert caught.value.field == "ied.schedules[0].start"
    configured = overlay(device_of(no_strtm), {**SETTINGS, "schedules": [
        {"name": "FSCH1", "start": "FSCH1.StrTm.setCal[SP]"}]}, "ied")
    assert configured["schedules"][0]["start"] == "FSCH1.StrTm.setCal[SP]"


def _dese_units(unit: str, multiplier: str) -> bytes:
    return mutated('<LN prefix="" lnClass="DESE" inst="1" lnType="DESE_GW"/>',
                   '<LN prefix="" lnClass="DESE" inst="1" lnType="DESE_GW">\n'
                   '<DOI name="ChaPwrLim"><SDI name="units">\n'
                   f'<DAI name="SIUnit"><Val>{unit}</Val></DAI>\n'
                   f'<DAI name="multiplier"><Val>{multiplier}</Val></DAI>\n'
                   '</SDI></DOI></LN>')


def test_unit_multiplier_set_in_the_scl_is_taken() -> None:
    found = propose(device_of(_dese_units("W", "k")))
    assert found["limit"]["multiplier"] == 3
    assert "multiplier" not in found["publish"]  # ChaPwrTgt's unit is not set
    cfg = ied_from_mapping(overlay(device_of(_dese_units("W", "M")), SETTINGS, "ied"))
    assert cfg.limit is not None and cfg.limit.multiplier == 6


@pytest.mark.parametrize(("unit", "multiplier", "element", "words"), [
    ("A", "k", "DAI[SIUnit]", "DESE1.ChaPwrLim is in 'A', not W"),
    ("W", "kilo", "DAI[multiplier]", "multiplier 'kilo' is not an SI multiplier"),
])
def test_unit_other_than_watt_is_refused(unit: str, multiplier: str, element: str,
                                         words: str) -> None:
    body = _dese_units(unit, multiplier)
    with pytest.raises(SclError) as caught:
        propose(device_of(body))
    assert caught.value.field == "SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/" \
        f"LN[DESE1]/DOI[ChaPwrLim]/SDI[units]/{element}" and words in str(caught.value)
    assert caught.value.line == line_of(f'<DAI name="{element[4:-1]}">', body.decode())


# -- bad SCL files ------------------------------------------------------------------------------

def test_not_xml() -> None:
    with pytest.raises(SclError) as caught:
        parse_scl(b"<SCL><IED>", "gateway.cid")
    assert caught.value.field == "gateway.cid" and "not well-formed" in str(caught.value)
    assert caught.value.line == 1


@pytest.mark.parametrize("body", [
    # billion laughs
    b'<?xml version="1.0"?><!DOCTYPE SCL [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b'<SCL xmlns="http://www.iec.ch/61850/2003/SCL">&b;</SCL>',
    # external entity
    b'<?xml version="1.0"?><!DOCTYPE SCL [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<SCL xmlns="http://www.iec.ch/61850/2003/SCL">&x;</SCL>',
    # a DTD from the network
    b'<!DOCTYPE SCL SYSTEM "http://example.invalid/scl.dtd"><SCL/>',
    # UTF-16 hides the DOCTYPE from a byte scan: the parsed document is checked too
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE SCL [<!ENTITY a "x">]>'
    '<SCL xmlns="http://www.iec.ch/61850/2003/SCL">&a;</SCL>'.encode("utf-16"),
], ids=["billion-laughs", "external-entity", "external-dtd", "utf16-doctype"])
def test_dtds_and_entities_are_refused(body: bytes) -> None:
    with pytest.raises(SclError, match="DTDs and entity declarations are refused"):
        parse_scl(body, "gateway.cid")


def test_size_cap_and_root() -> None:
    with pytest.raises(SclError, match="exceed the cap of 1000 bytes"):
        parse_scl(TEXT.encode(), "gateway.cid", max_bytes=1000)
    with pytest.raises(SclError, match="exceed the cap"):
        load_scl(CID, max_bytes=1000)
    with pytest.raises(SclError) as caught:
        parse_scl(mutated("http://www.iec.ch/61850/2003/SCL", "urn:other"), "gateway.cid")
    assert caught.value.field == "SCL" and "expected the root element SCL" in str(caught.value)


BAD_FILES: list[tuple[str, bytes, str, str, str]] = [
    ("missing-ied", mutated('<IED name="GW"', '<IED name="GW2"'), "SCL",
     "no IED named 'GW' (IEDs in the file: 'GW2')", "<SCL "),
    ("missing-ln", mutated('lnClass="FSCC" lnInst="1"', 'lnClass="FSCC" lnInst="3"'),
     "SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/LN0[LLN0]/DataSet[Schedules]"
     "/FCDA[ActSchdRef]", "no logical node FSCC3 in LDevice EVSE1", 'lnClass="FSCC" lnInst'),
    ("missing-do-type", mutated('<DOType id="ASG_LIM"', '<DOType id="ASG_LIM_OLD"'),
     "SCL/DataTypeTemplates/LNodeType[DESE_GW]/DO[ChaPwrLim]",
     "type 'ASG_LIM' is not a DOType in DataTypeTemplates", '<DO name="ChaPwrLim"'),
    ("missing-ln-type", mutated('<LNodeType id="FSCC_GW"', '<LNodeType id="FSCC_X"'),
     "SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/LN[FSCC1]",
     "lnType 'FSCC_GW' is not a LNodeType", 'lnClass="FSCC" inst="1"'),
    ("missing-da-type", mutated('<DAType id="Unit">', '<DAType id="Units">'),
     "SCL/DataTypeTemplates/DOType[ASG_LIM]/DA[units]", "type 'Unit' is not a DAType",
     '<DA name="units"'),
    ("wrong-fc-in-dataset", mutated('doName="ChaPwrLim" daName="q" fc="ST"',
                                    'doName="ChaPwrLim" daName="q" fc="MX"'),
     "SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/LN0[LLN0]/DataSet[Limits]"
     "/FCDA[ChaPwrLim]", "wrong FC: DESE1.ChaPwrLim.q is ST in DataTypeTemplates, the FCDA "
     "says MX", 'daName="q" fc="MX"'),
    ("unknown-fc", mutated('<DA name="setTm" bType="Timestamp" fc="SP"',
                           '<DA name="setTm" bType="Timestamp" fc="XX"'),
     "SCL/DataTypeTemplates/DOType[TSG_SP]/DA[setTm]", "unknown functional constraint "
     "fc='XX'", '<DA name="setTm"'),
    ("missing-dataset", mutated('datSet="Schedules"', 'datSet="Plans"'),
     "SCL/IED[GW]/AccessPoint[AP1]/Server/LDevice[EVSE1]/LN0[LLN0]"
     "/ReportControl[urcbSchedules01]", "datSet 'Plans' is not a DataSet of LLN0",
     'name="urcbSchedules01"'),
    ("type-cycle", mutated('<BDA name="f" bType="FLOAT32"/>',
                           '<BDA name="f" bType="Struct" type="AnalogueValue_F"/>'),
     "SCL/DataTypeTemplates/DAType[AnalogueValue_F]", "type 'AnalogueValue_F' contains "
     "itself", '<DAType id="AnalogueValue_F">'),
]


@pytest.mark.parametrize(("case", "body", "element", "words", "at"), BAD_FILES,
                         ids=[c[0] for c in BAD_FILES])
def test_bad_scl_names_the_element_and_line(case: str, body: bytes, element: str, words: str,
                                            at: str) -> None:
    with pytest.raises(SclError) as caught:
        propose(device_of(body))
    assert caught.value.field == element and words in str(caught.value)
    assert caught.value.line == line_of(at, body.decode())
    assert f"gateway.cid, line {caught.value.line}" in str(caught.value)


def test_types_resolve_through_structs_with_the_da_fc() -> None:
    device = read_device(load_scl(CID), "GW")
    attrs = device.attributes("DESE1", "ChaPwrLim") or {}
    assert attrs["setMag.f"] == Attribute("setMag.f", "SP", "FLOAT32")
    assert attrs["units.multiplier"] == Attribute("units.multiplier", "CF", "Enum")
    assert device.attributes("DESE1", "NoSuchDo") is None


# -- fuzz: mutated files fail only with SclError ------------------------------------------------

_ATTRIBUTE = re.compile(r'="[^"]*"')


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """The CID with a few attribute values replaced, lines dropped or repeated, bytes cut."""
    text = TEXT
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["value", "value", "value", "drop", "repeat", "cut"]))
        if kind == "value":
            spots = [m.span() for m in _ATTRIBUTE.finditer(text)]
            if not spots:
                continue
            start, end = spots[draw(st.integers(0, len(spots) - 1))]
            value = draw(st.one_of(
                st.sampled_from(["", "1", "ST", "SP", "XX", "Struct", "FSCH1", "ASG_LIM",
                                 "DESE", "true", "-1", "ValASG1", "setMag.f", "Timestamp"]),
                st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F,
                                               exclude_characters='"<&'), max_size=8)))
            text = text[:start] + f'="{value}"' + text[end:]
        else:
            lines = text.splitlines(keepends=True)
            # whole elements mostly (still well-formed): the checks past parsing get work
            whole = [i for i, line in enumerate(lines) if line.rstrip().endswith("/>")]
            at = draw(st.sampled_from(whole) if kind != "cut" else
                      st.integers(0, len(lines) - 1))
            if kind == "drop":
                del lines[at]
            elif kind == "repeat":
                lines.insert(at, lines[at])
            else:
                lines[at] = lines[at][:draw(st.integers(0, len(lines[at])))]
            text = "".join(lines)
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_scl_raises_only_scl_errors(body: bytes) -> None:
    try:
        device = device_of(body)
        propose(device)
        out = overlay(device, {**SETTINGS, "publish": {}}, "ied")
    except SclError:
        return
    except ConfigError as exc:  # a reference the mutated file no longer gives
        assert exc.field.startswith("ied.") and "the SCL cannot give it" in exc.message
        return
    try:
        cfg = ied_from_mapping(out)
    except ConfigError:  # e.g. no limit and no schedule left to read
        return
    refs = [r for r in (cfg.limit.value, cfg.limit.quality, cfg.limit.time) if r] \
        if cfg.limit else []
    refs += [r for s in cfg.schedules for r in (s.state, s.priority, s.start, s.value_ref(1))]
    assert {r.path.split(".")[0] for r in refs} <= set(device.nodes)
