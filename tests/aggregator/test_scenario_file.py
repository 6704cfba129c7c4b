"""Tests for ``aggregator.scenario_file``: the shipped scenario, error paths/lines, fuzzing."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aggregator.model import DemandCharge, OcppVersion
from aggregator.scenario import PlanSettings, Scenario
from aggregator.scenario_file import (
    DOCUMENT,
    MAX_FILE_BYTES,
    ScenarioError,
    load_scenario,
    parse_scenario,
)

SCENARIOS = Path(__file__).parents[2] / "scenarios"
SHIPPED = SCENARIOS / "office-evening-cap.yaml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")

# A small valid scenario; the bad documents below are one edit away from it.  The line
# numbers asserted in BAD_DOCUMENTS refer to this text (line 1 is "name: base").
BASE = """\
name: base
start: 2026-11-20T12:00:00Z
intervals: 8
nodes:
  - id: site-a
    kind: site
    import_max_kw: 100
evses:
  - id: A-01
    node: site-a
    max_import_kw: 11
  - id: A-02
    node: site-a
    max_import_kw: 11
    max_export_kw: 10
    v2g: true
    ocpp: 2.1
sessions:
  - id: s-1
    evse: A-01
    arrival: 2026-11-20T12:00:00Z
    departure: 2026-11-20T13:00:00Z
    battery_kwh: 60
    soc: 0.3
    energy_kwh: 10
    max_charge_kw: 11
constraints:
  - node: site-a
    start: 2026-11-20T12:00:00Z
    end: 2026-11-20T13:00:00Z
    import_max_kw: 50
prices:
  - start: 2026-11-20T12:00:00Z
    end: 2026-11-20T14:00:00Z
    import_per_kwh: 0.3
    export_per_kwh: 0.1
loads:
  - node: site-a
    start: 2026-11-20T12:00:00Z
    end: 2026-11-20T14:00:00Z
    load_kw: 20
"""

SECOND_SESSION = """\
  - id: s-2
    evse: A-01
    arrival: 2026-11-20T12:30:00Z
    departure: 2026-11-20T14:00:00Z
    battery_kwh: 50
    soc: 0.5
    target_soc: 0.8
    max_charge_kw: 11
"""


def edit(old: str, new: str) -> str:
    """BASE with the one occurrence of ``old`` replaced by ``new``."""
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def after_first_session(extra: str) -> str:
    return edit("    max_charge_kw: 11\nconstraints:", "    max_charge_kw: 11\n" + extra
                + "constraints:")


EVSE_A01 = "  - id: A-01\n    node: site-a\n    max_import_kw: 11\n"
CONSTRAINT_NODE = "  - node: site-a\n    start: 2026-11-20T12:00:00Z\n    end: 2026-11-20T13:00"
PRICES = BASE[BASE.index("prices:"):BASE.index("loads:")]
LOAD_NODE = BASE[BASE.index("  - node: site-a", BASE.index("loads:")):BASE.index("    load_kw")]

# (case id, document, expected path, expected line)
BAD_DOCUMENTS: list[tuple[str, str, str, int | None]] = [
    ("duplicate key", edit("    soc: 0.3\n", "    soc: 0.3\n    soc: 0.4\n"),
     "sessions[0].soc", 25),
    ("unknown key", edit("  - id: A-01\n", "  - id: A-01\n    colour: red\n"),
     "evses[0].colour", 10),
    ("unknown top-level key", edit("intervals: 8\n", "intervals: 8\nhorizon: 8\n"),
     "horizon", 4),
    ("naive datetime", edit("arrival: 2026-11-20T12:00:00Z", "arrival: 2026-11-20T12:00:00"),
     "sessions[0].arrival", 21),
    ("date without time", edit("departure: 2026-11-20T13:00:00Z", "departure: 2026-11-20"),
     "sessions[0].departure", 22),
    ("not a datetime", edit("start: 2026-11-20T12:00:00Z\nintervals", "start: noon\nintervals"),
     "start", 2),
    ("departure before arrival",
     edit("departure: 2026-11-20T13:00:00Z", "departure: 2026-11-20T11:00:00Z"),
     "sessions[0].departure", 22),
    ("negative power", edit(EVSE_A01, EVSE_A01.replace("11", "-11")),
     "evses[0].max_import_kw", 11),
    ("negative node rating", edit("import_max_kw: 100", "import_max_kw: -100"),
     "nodes[0].import_max_kw", 7),
    ("bool as number", edit(EVSE_A01, EVSE_A01.replace("11", "true")),
     "evses[0].max_import_kw", 11),
    ("string as number", edit("soc: 0.3", "soc: '30%'"), "sessions[0].soc", 24),
    ("null as number", edit("battery_kwh: 60", "battery_kwh:"), "sessions[0].battery_kwh", 23),
    ("nan", edit("battery_kwh: 60", "battery_kwh: .nan"), "sessions[0].battery_kwh", 23),
    ("inf", edit("load_kw: 20", "load_kw: -.inf"), "loads[0].load_kw", 41),
    ("float where int needed", edit("intervals: 8", "intervals: 8.0"), "intervals", 3),
    ("int out of range", edit("intervals: 8", "intervals: 0"), "intervals", 3),
    ("octal-looking int", edit("intervals: 8", "intervals: 010"), "intervals", 3),
    ("base-60 number", edit("load_kw: 20", "load_kw: 1:30"), "loads[0].load_kw", 41),
    ("float priority", edit("import_max_kw: 50\n", "import_max_kw: 50\n    priority: 1.5\n"),
     "constraints[0].priority", 32),
    ("missing top-level key", edit("intervals: 8\n", ""), "intervals", 1),
    ("missing item key", edit("    max_charge_kw: 11\nconstraints", "constraints"),
     "sessions[0].max_charge_kw", 19),
    ("unknown node (EVSE)", edit(EVSE_A01, EVSE_A01.replace("site-a", "site-z")),
     "evses[0].node", 10),
    ("unknown node (constraint)", edit(CONSTRAINT_NODE, CONSTRAINT_NODE.replace("a\n", "z\n", 1)),
     "constraints[0].node", 28),
    ("unknown node (load)", edit(LOAD_NODE, LOAD_NODE.replace("a\n", "z\n", 1)),
     "loads[0].node", 38),
    ("unknown parent", edit("    kind: site\n", "    kind: site\n    parent: area-9\n"),
     "nodes[0].parent", 7),
    ("unknown node kind", edit("kind: site", "kind: substation"), "nodes[0].kind", 6),
    ("EVSE id clashes with node id", edit("  - id: A-02", "  - id: site-a"), "evses[1].id", 12),
    ("unknown EVSE", edit("evse: A-01", "evse: A-99"), "sessions[0].evse", 20),
    ("overlapping sessions", after_first_session(SECOND_SESSION), "sessions[1].arrival", 29),
    ("duplicate session id",
     after_first_session(SECOND_SESSION.replace("s-2", "s-1").replace("A-01", "A-02")),
     "sessions[1].id", 27),
    ("energy does not fit", edit("energy_kwh: 10", "energy_kwh: 50"),
     "sessions[0].energy_kwh", 25),
    ("energy and target both given",
     edit("    energy_kwh: 10\n", "    energy_kwh: 10\n    target_soc: 0.8\n"),
     "sessions[0].energy_kwh", 25),
    ("constraint without a limit", edit("    import_max_kw: 50\n", ""),
     "constraints[0].import_max_kw", 28),
    ("bad ocpp version", edit("ocpp: 2.1", "ocpp: 2.2"), "evses[1].ocpp", 17),
    ("V2G on OCPP 1.6", edit("ocpp: 2.1", "ocpp: 1.6"), "evses[1].v2g", 16),
    ("settings unknown key", edit("intervals: 8\n", "intervals: 8\nsettings:\n  vat: 0.21\n"),
     "settings.vat", 5),
    ("settings negative",
     edit("intervals: 8\n", "intervals: 8\nsettings:\n  unmet_penalty_per_kwh: -1\n"),
     "settings.unmet_penalty_per_kwh", 5),
    ("empty node list",
     edit("nodes:\n  - id: site-a\n    kind: site\n    import_max_kw: 100\n", "nodes: []\n"),
     "nodes", 4),
    ("list expected", edit(PRICES, "prices: cheap\n"), "prices", 32),
    ("item not a mapping", edit("  - id: A-01\n", "  - A-01\n  - id: A-00\n"), "evses[0]", 9),
    ("non-string key", edit("  - id: A-01\n", "  - id: A-01\n    1: x\n"), "evses[0]", 10),
    ("merge key", edit("  - id: A-01\n", "  - id: A-01\n    <<: {}\n"), "evses[0]", 10),
    ("horizon past year 9999",
     edit("start: 2026-11-20T12:00:00Z\nintervals", "start: 9999-12-31T23:00:00Z\nintervals"),
     "intervals", 3),
    ("YAML syntax error", edit("    kind: site\n", "    kind: site: x\n"), DOCUMENT, 6),
    ("control character", edit("name: base", "name: ba\x07se"), DOCUMENT, 1),
    ("second document", BASE + "---\nname: other\n", DOCUMENT, 43),
    ("non-mapping root", "- a\n- b\n", DOCUMENT, 1),
    ("scalar root", "\n\njust some text\n", DOCUMENT, 3),
    ("empty file", "", DOCUMENT, None),
    ("only comments", "# nothing here\n\n", DOCUMENT, None),
    ("only a document marker", "---\n", DOCUMENT, None),
    ("deep nesting", "[" * 1000, DOCUMENT, None),
    ("too large text", "#" * (MAX_FILE_BYTES + 1), DOCUMENT, None),
]

BAD_JSON = """\
{
  "name": "json",
  "start": "2026-11-20T12:00:00Z",
  "intervals": 8,
  "nodes": [{"id": "site-a", "kind": "site"}],
  "evses": [
    {"id": "A-01", "node": "site-a", "max_import_kw": 11},
    {"id": "A-02", "node": "site-a", "max_import_kw": "eleven"}
  ]
}
"""


def expect_error(text: str, source: str = "<string>") -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source)
    return caught.value


# --- valid input ------------------------------------------------------------------------------

def test_base_document_is_valid() -> None:
    scenario = parse_scenario(BASE)
    assert scenario.name == "base"
    assert scenario.n_intervals == 8
    assert scenario.interval == timedelta(minutes=15)
    assert scenario.end == datetime(2026, 11, 20, 14, tzinfo=UTC)


def test_shipped_scenario_loads() -> None:
    scenario = load_scenario(SHIPPED)
    assert scenario.name == "office-evening-cap"
    assert scenario.start == datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert scenario.interval == timedelta(minutes=15)
    assert scenario.n_intervals == 96
    kinds = sorted(node.kind.value for node in scenario.tree.nodes)
    assert kinds == ["feeder", "site", "site"]
    assert len(scenario.tree.evses) == 20
    v2g = [evse for evse in scenario.tree.evses if evse.v2g_capable]
    assert len(v2g) == 4
    assert all(evse.ocpp_version is OcppVersion.V21 and evse.max_export_kw == 10 for evse in v2g)
    assert any(evse.ocpp_version is OcppVersion.V16 for evse in scenario.tree.evses)
    assert 28 <= len(scenario.sessions) <= 36
    for session in scenario.sessions:
        assert scenario.start <= session.arrival < session.departure <= scenario.end
        assert 40 <= session.battery_capacity_kwh <= 80
        if session.energy_requested_kwh is not None:
            room_kwh = session.battery_capacity_kwh * (1 - session.soc_initial)
            assert session.energy_requested_kwh <= room_kwh
        if session.max_discharge_kw > 0:
            assert session.min_soc_v2g == 0.4
            assert scenario.tree.evse(session.evse_id).can_discharge
    peak = [c for c in scenario.constraints if c.source == "openadr" and c.import_max_kw]
    assert len(peak) == 1
    assert peak[0].node_id == "feeder-1"
    assert peak[0].import_max_kw == 90
    assert peak[0].start.hour == 16 and peak[0].end.hour == 20
    assert any(c.export_max_kw is not None and c.source == "openadr"
               and scenario.tree.node(c.node_id).kind.value == "site"
               for c in scenario.constraints)
    ratings = [c for c in scenario.constraints if c.source == "rating"]
    assert {c.source_ref for c in ratings} == {"nodes[0]", "nodes[1]", "nodes[2]"}
    assert all(c.start == scenario.start and c.end == scenario.end for c in ratings)
    prices = sorted(scenario.prices, key=lambda p: p.start)
    assert len(prices) == 24
    assert prices[0].start == scenario.start and prices[-1].end == scenario.end
    assert max(prices, key=lambda p: p.import_price_per_kwh).start.hour in (17, 18, 19)
    assert all(p.export_price_per_kwh < p.import_price_per_kwh for p in prices)
    assert {load.node_id for load in scenario.loads} == {"site-a", "site-b"}


def test_offsets_are_converted_to_utc() -> None:
    text = edit("start: 2026-11-20T12:00:00Z\nintervals",
                "start: 2026-11-20T13:00:00+01:00\nintervals")
    text = text.replace("arrival: 2026-11-20T12:00:00Z", "arrival: '2026-11-20T07:00:00-05:00'")
    scenario = parse_scenario(text)
    assert scenario.start == datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert scenario.start.utcoffset() == timedelta(0)
    assert scenario.sessions[0].arrival == datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_defaults_and_conversions() -> None:
    scenario = parse_scenario(BASE)
    plain, bidirectional = scenario.tree.evses
    assert (plain.max_export_kw, plain.phases, plain.voltage_v, plain.min_current_a) == (
        0.0, 3, 230.0, 6.0)
    assert plain.ocpp_version is OcppVersion.V201 and not plain.v2g_capable
    assert bidirectional.ocpp_version is OcppVersion.V21  # written as the YAML float 2.1
    session = scenario.sessions[0]
    assert session.energy_requested_kwh == 10 and session.target_soc is None
    assert (session.min_soc_v2g, session.max_discharge_kw) == (0.2, 0.0)
    assert (session.charge_efficiency, session.discharge_efficiency) == (0.95, 0.95)
    rating, listed = scenario.constraints
    assert (rating.source, rating.source_ref, rating.import_max_kw) == ("rating", "nodes[0]", 100)
    assert rating.export_max_kw is None
    assert (listed.source, listed.source_ref, listed.priority) == ("scenario", "constraints[0]", 0)
    assert listed.received_at == scenario.start and listed.expires_at is None
    assert scenario.settings == PlanSettings()


def test_yaml_float_ocpp_16_is_accepted() -> None:
    scenario = parse_scenario(edit(EVSE_A01, EVSE_A01 + "    ocpp: 1.6\n"))
    assert scenario.tree.evses[0].ocpp_version is OcppVersion.V16


def test_json_round_trip_equals_yaml() -> None:
    def iso(value: object) -> str:
        assert isinstance(value, datetime)
        return value.isoformat()

    as_json = json.dumps(yaml.safe_load(SHIPPED_TEXT), indent=2, default=iso)
    assert as_json.lstrip().startswith("{")
    assert parse_scenario(as_json, "office.json") == load_scenario(SHIPPED)


def test_json_exponent_numbers_are_numbers() -> None:
    text = '{"name": "j", "start": "2026-11-20T12:00:00Z", "intervals": 4,' \
           ' "nodes": [{"id": "n", "kind": "site", "import_max_kw": 1.5e2}],' \
           ' "evses": [{"id": "e", "node": "n", "max_import_kw": 11e0}]}'
    scenario = parse_scenario(text)
    assert scenario.tree.evses[0].max_import_kw == 11.0
    assert scenario.constraints[0].import_max_kw == 150.0


# --- invalid input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "path", "line"),
                         [case[1:] for case in BAD_DOCUMENTS],
                         ids=[case[0] for case in BAD_DOCUMENTS])
def test_bad_document(text: str, path: str, line: int | None) -> None:
    err = expect_error(text, "bad.yaml")
    assert (err.path, err.line) == (path, line), str(err)
    where = "bad.yaml" if line is None else f"bad.yaml:{line}"
    assert str(err) == f"{where}: {path}: {err.reason}"
    assert err.source == "bad.yaml" and err.reason


def test_messages_name_the_problem() -> None:
    unknown = expect_error(edit("  - id: A-01\n", "  - id: A-01\n    colour: red\n"))
    assert "unknown key 'colour'" in unknown.reason and "max_import_kw" in unknown.reason
    duplicate = expect_error(edit("    soc: 0.3\n", "    soc: 0.3\n    soc: 0.4\n"))
    assert "first at line 24" in duplicate.reason
    overlap = expect_error(after_first_session(SECOND_SESSION))
    assert "'s-1'" in overlap.reason and "'s-2'" in overlap.reason
    ocpp = expect_error(edit("ocpp: 2.1", "ocpp: 2.2"))
    assert "'2.2'" in ocpp.reason and "2.0.1" in ocpp.reason
    naive = expect_error(edit("arrival: 2026-11-20T12:00:00Z", "arrival: 2026-11-20T12:00:00"))
    assert "no UTC offset" in naive.reason


def test_overlap_is_reported_on_the_later_session_even_if_listed_first() -> None:
    text = edit("arrival: 2026-11-20T12:00:00Z", "arrival: 2026-11-20T12:45:00Z")
    text = text.replace("    max_charge_kw: 11\nconstraints:",
                        "    max_charge_kw: 11\n" + SECOND_SESSION.replace("12:30", "12:00")
                        + "constraints:")
    err = expect_error(text)
    assert (err.path, err.line) == ("sessions[0].arrival", 21)


def test_json_error_has_the_json_line() -> None:
    err = expect_error(BAD_JSON, "bad.json")
    assert (err.path, err.line) == ("evses[1].max_import_kw", 8)
    assert str(err).startswith("bad.json:8: evses[1].max_import_kw: expected a number")


def test_json_duplicate_key_and_syntax_error_lines() -> None:
    duplicate = BAD_JSON.replace('"intervals": 8,', '"intervals": 8, "name": "again",')
    err = expect_error(duplicate)
    assert (err.path, err.line) == ("name", 4)
    broken = BAD_JSON.replace('"max_import_kw": 11}', '"max_import_kw": 11')
    err = expect_error(broken)
    assert (err.path, err.line) == (DOCUMENT, 9)  # where the parser finds "]" instead of "}"
    assert "expected ',' or '}'" in err.reason


def test_too_large_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: cheap to create
    with pytest.raises(ScenarioError) as caught:
        load_scenario(big)
    assert (caught.value.path, caught.value.line) == (DOCUMENT, None)
    assert "larger than" in caught.value.reason


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as missing:
        load_scenario(tmp_path / "absent.yaml")
    assert missing.value.path == DOCUMENT and "cannot read" in missing.value.reason
    with pytest.raises(ScenarioError) as directory:
        load_scenario(tmp_path)
    assert directory.value.path == DOCUMENT
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: x\ndescription: caf\xe9\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(latin1)
    assert (caught.value.path, caught.value.line) == (DOCUMENT, 2)


def test_load_scenario_reads_utf8_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.replace("name: base", "name: caf\u00e9").encode())
    assert load_scenario(path).name == "caf\u00e9"
    assert load_scenario(str(path)).name == "caf\u00e9"


def test_scenario_error_pickles() -> None:
    err = expect_error(edit("soc: 0.3", "soc: 1.3"), "x.yaml")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.source, copy.path, copy.line, copy.reason, str(copy)) == (
        err.source, err.path, err.line, err.reason, str(err))
    assert isinstance(copy, ValueError)


# --- fuzzing ----------------------------------------------------------------------------------

def check_outcome(text: str) -> Scenario | ScenarioError:
    """Parse ``text``; only a Scenario or a well-formed ScenarioError may come out."""
    try:
        return parse_scenario(text, "fuzz.yaml")
    except ScenarioError as err:
        assert err.path and err.reason
        assert err.line is None or 1 <= err.line <= len(text.splitlines()) + 1
        assert str(err).startswith("fuzz.yaml")
        return err


YAML_TOKENS = ["name:", "nodes:", "evses:", "sessions:", "start:", "intervals:", " ", "  ", "\n",
               "- ", ": ", "{", "}", "[", "]", ",", "&a ", "*a", "!!int ", "!!str ", "!x ",
               "---\n", "...\n", "? ", "<<: ", "#", "'", '"', "|\n", ">\n", "~", "null", "true",
               "0b_", "0x", "1_000", "1:30", ".nan", "-.inf", "1e400", "1.0e+400", "9" * 50,
               "2026-11-20T12:00:00Z", "2026-11-20", "id: x", "kind: site", "\t", "\r", "\x85",
               "\u2028", "\ufeff", "\x00"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join),
                 st.lists(st.sampled_from(YAML_TOKENS), max_size=20).map(
                     lambda parts: BASE[:300] + "".join(parts) + BASE[300:])))
def test_fuzz_arbitrary_text(text: str) -> None:
    outcome = check_outcome(text)
    assert isinstance(outcome, Scenario | ScenarioError)


SHIPPED_ROOT = yaml.compose(SHIPPED_TEXT, Loader=yaml.SafeLoader)
assert isinstance(SHIPPED_ROOT, MappingNode)
SHIPPED_COUNTS = (3, 20, 32, 24)
# Keys whose absence must be an error, by the section (list) they are in.
REQUIRED = {"": {"name", "start", "intervals", "nodes", "evses"}, "nodes": {"id", "kind"},
            "evses": {"id", "node", "max_import_kw"},
            "sessions": {"id", "evse", "arrival", "departure", "battery_kwh", "soc",
                         "max_charge_kw", "energy_kwh", "target_soc"},
            "constraints": {"node", "start", "end"},
            "prices": {"start", "end", "import_per_kwh", "export_per_kwh"},
            "loads": {"node", "start", "end", "load_kw"}, "settings": set(),
            "demand_charges": {"node", "start", "end", "price_per_kw"}}


def mapping_slots(node: Node, section: str,
                  found: list[tuple[MappingNode, int, str]]) -> list[tuple[MappingNode, int, str]]:
    """Every (mapping, index of a key/value pair, section name) in the tree."""
    if isinstance(node, MappingNode):
        for index, (key, value) in enumerate(node.value):
            found.append((node, index, section))
            mapping_slots(value, key.value if section == "" else section, found)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            mapping_slots(item, section, found)
    return found


SLOTS = mapping_slots(SHIPPED_ROOT, "", [])
SCALAR_SLOTS = [slot for slot in SLOTS if isinstance(slot[0].value[slot[1]][1], ScalarNode)]
RAW_SCALARS = ["0b_", "0x_", "1_000", "1:30", ".nan", ".inf", "-.inf", "1.0e+400", "9" * 400,
               "yes", "off", "~", "", "2026-11-20", "2026-11-20 12:00:00", "2.0.1", "1.6",
               "2026-11-20T12:00:00+25:00", "0001-01-01T00:00:00+01:00", "A-01", "site-a",
               "feeder", "-0", "0o17", "1e5"]

python_values: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.datetimes(), st.datetimes(timezones=st.just(UTC)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def value_node(value: Any) -> Node:
    node = yaml.compose(yaml.safe_dump(value), Loader=yaml.SafeLoader)
    assert node is not None
    return node


def raw_node(raw: str) -> Node:
    node = yaml.compose(f"k: {raw}\n", Loader=yaml.SafeLoader)
    assert isinstance(node, MappingNode)
    value: Node = node.value[0][1]
    return value


replacement_nodes = st.one_of(python_values.map(value_node),
                              st.sampled_from(RAW_SCALARS).map(raw_node))
dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_shipped_scenario(data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="delete"):
        mapping, index, section = SLOTS[data.draw(st.integers(0, len(SLOTS) - 1), label="slot")]
        pair = mapping.value.pop(index)
        try:
            text = yaml.serialize(SHIPPED_ROOT, Dumper=dumper)
        finally:
            mapping.value.insert(index, pair)
        key = pair[0].value
        outcome = check_outcome(text)
        if key in REQUIRED[section]:
            assert isinstance(outcome, ScenarioError), key
            assert outcome.path.endswith(key) or "energy_kwh" in outcome.path, outcome
    else:
        slot = data.draw(st.integers(0, len(SCALAR_SLOTS) - 1), label="scalar slot")
        mapping, index, section = SCALAR_SLOTS[slot]
        key, old = mapping.value[index]
        new = data.draw(replacement_nodes, label="value")
        mapping.value[index] = (key, new)
        try:
            text = yaml.serialize(SHIPPED_ROOT, Dumper=dumper)
        finally:
            mapping.value[index] = (key, old)
        outcome = check_outcome(text)
        if not isinstance(new, ScalarNode):  # every scalar slot of the schema wants a scalar
            assert isinstance(outcome, ScenarioError), key.value
            assert outcome.path.endswith(key.value), outcome
    if isinstance(outcome, Scenario) and section:  # no top-level list was removed
        counts = (len(outcome.tree.nodes), len(outcome.tree.evses), len(outcome.sessions),
                  len(outcome.prices))
        assert counts == SHIPPED_COUNTS


GENERATED = """\
name: generated
start: 2026-11-20T07:00:00Z
intervals: 48
nodes: [{id: site, kind: site, import_max_kw: 50}]
evses:
  - {id: e1, node: site, max_import_kw: 11}
  - {id: e2, node: site, max_import_kw: 11}
  - {id: e3, node: site, max_import_kw: 11}
sessions:
  - {id: s1, evse: e1, arrival: 2026-11-20T08:00:00Z, departure: 2026-11-20T12:00:00Z,
     battery_kwh: 60, soc: 0.3, energy_kwh: 10, max_charge_kw: 11}
generator: {count: 6, seed: 4, arrival_mean_h: 1.5, dwell_median_h: 3}
"""


def test_a_seeded_generator_adds_sessions_on_the_free_evses() -> None:
    scenario = parse_scenario(GENERATED)
    drawn = [s for s in scenario.sessions if s.session_id.startswith("g-")]
    assert drawn and {s.evse_id for s in drawn} <= {"e2", "e3"}  # e1 has a listed session
    assert all(scenario.start <= s.arrival < s.departure <= scenario.end for s in drawn)
    assert parse_scenario(GENERATED).sessions == scenario.sessions  # the seed fixes them
    other = parse_scenario(GENERATED.replace("seed: 4", "seed: 5"))
    assert other.sessions != scenario.sessions


@pytest.mark.parametrize(("old", "new", "path", "reason"), [
    ("count: 6, ", "", "generator.count", "missing required key 'count'"),
    ("count: 6", "count: -6", "generator.count", "must be an integer in 0.."),
    ("dwell_median_h: 3", "dwell_median_h: 0", "generator.dwell_median_h", "must be"),
    ("seed: 4", "speed: 4", "generator.speed", "unknown key"),
])
def test_a_bad_generator_names_its_field(old: str, new: str, path: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(GENERATED.replace(old, new))
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert caught.value.line == 12  # the generator's line


def test_a_generator_pool_must_name_free_evses() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(GENERATED.replace("dwell_median_h: 3}", "dwell_median_h: 3,\n"
                                         "            evses: [e2, e1]}"))
    assert caught.value.path == "generator.evses[1]"
    assert "has listed sessions" in caught.value.reason


# --- demand charges ---------------------------------------------------------------------------

# BASE has 41 lines; this section follows it (line 42 is "demand_charges:").
DEMAND_CHARGES = """\
demand_charges:
  - node: site-a
    start: 2026-11-20T12:00:00Z
    end: 2026-11-20T13:00:00Z
    price_per_kw: 9.5
"""
WITH_CHARGES = BASE + DEMAND_CHARGES


def test_demand_charges_are_read_with_scenario_provenance() -> None:
    """Each entry becomes a ``DemandCharge`` from the source "scenario", referenced by its
    path and received at the scenario's start; without the section there are none."""
    scenario = parse_scenario(WITH_CHARGES)
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert scenario.demand_charges == (DemandCharge(
        node_id="site-a", start=start, end=start + timedelta(hours=1), price_per_kw=9.5,
        source="scenario", source_ref="demand_charges[0]", received_at=start),)
    assert parse_scenario(BASE).demand_charges == ()
    assert parse_scenario(BASE + "demand_charges:\n").demand_charges == ()
    as_json = json.dumps(yaml.safe_load(WITH_CHARGES), default=str)
    assert parse_scenario(as_json).demand_charges == scenario.demand_charges


@pytest.mark.parametrize(("old", "new", "path", "line", "reason"), [
    ("node: site-a", "node: site-z", "demand_charges[0].node", 43, "unknown grid node"),
    ("node: site-a", "node: A-01", "demand_charges[0].node", 43, "unknown grid node 'A-01'"),
    ("price_per_kw: 9.5", "price_per_kw: -1", "demand_charges[0].price_per_kw", 46,
     "must be >= 0"),
    ("price_per_kw: 9.5", "price_per_kw: .inf", "demand_charges[0].price_per_kw", 46,
     "finite"),
    ("price_per_kw: 9.5", "price_per_kw: '9.5'", "demand_charges[0].price_per_kw", 46,
     "expected a number"),
    ("    price_per_kw: 9.5\n", "", "demand_charges[0].price_per_kw", 43,
     "missing required key"),
    ("end: 2026-11-20T13:00:00Z", "end: 2026-11-20T11:00:00Z", "demand_charges[0].end", 45,
     "must be after start"),
    ("end: 2026-11-20T13:00:00Z", "end: 2026-11-20T13:00:00", "demand_charges[0].end", 45,
     "no UTC offset"),
    ("price_per_kw: 9.5", "price_per_kw: 9.5\n    ref: tariff", "demand_charges[0].ref", 47,
     "unknown key"),
    (DEMAND_CHARGES, "demand_charges: 9.5\n", "demand_charges", 42, "expected a list"),
])
def test_a_bad_demand_charge_names_its_field_and_line(old: str, new: str, path: str, line: int,
                                                      reason: str) -> None:
    """Errors point at the entry's key and line like every other section."""
    assert DEMAND_CHARGES.count(old) == 1, old
    err = expect_error(BASE + DEMAND_CHARGES.replace(old, new))
    assert (err.path, err.line) == (path, line), err
    assert reason in err.reason


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["node", "start", "end", "price_per_kw"]), replacement_nodes)
def test_fuzz_demand_charge_values(key: str, new: Node) -> None:
    """Any value in any key of a demand charge gives a scenario or an error at that key
    (a start moved past the end is reported at the end, as for every window)."""
    root = yaml.compose(WITH_CHARGES, Loader=yaml.SafeLoader)
    assert isinstance(root, MappingNode)
    entry = next(v for k, v in root.value if k.value == "demand_charges").value[0]
    index = next(i for i, (k, _) in enumerate(entry.value) if k.value == key)
    entry.value[index] = (entry.value[index][0], new)
    outcome = check_outcome(yaml.serialize(root, Dumper=dumper))
    if isinstance(outcome, ScenarioError):
        allowed = (key, "end") if key == "start" else (key,)
        assert outcome.path in [f"demand_charges[0].{k}" for k in allowed], outcome
    else:
        [charge] = outcome.demand_charges
        assert charge.price_per_kw >= 0 and charge.start < charge.end


def test_a_generator_whose_stays_do_not_fit_the_horizon_is_refused_at_its_line() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(GENERATED.replace("intervals: 48", "intervals: 1").replace(
            "arrival: 2026-11-20T08:00:00Z, departure: 2026-11-20T12:00:00Z",
            "arrival: 2026-11-20T07:00:00Z, departure: 2026-11-20T07:10:00Z").replace(
            "dwell_median_h: 3}", "dwell_median_h: 3, min_dwell_h: 1}"))
    assert caught.value.path == "generator" and caught.value.line == 12
    assert "shorter than min_dwell_h" in caught.value.reason
