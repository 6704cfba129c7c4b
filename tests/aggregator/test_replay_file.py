"""Replay sections of a scenario file: read into the replay, and refused with path and line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.replay import replay
from aggregator.replay_file import load_replay, parse_replay
from aggregator.scenario_file import ScenarioError, parse_scenario

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "adapters" / "ieee2030_5" / "recorded" / "envoy-v2.2.0"
T0 = datetime(2026, 11, 21, 4, tzinfo=UTC)

BASE = """\
name: replay-sections
start: 2026-11-21T04:00:00Z
interval_minutes: 15
intervals: 16
nodes:
  - {id: feeder, kind: feeder}
  - {id: site, kind: site, parent: feeder, import_max_kw: 40}
evses:
  - {id: e1, node: site, max_import_kw: 11, ocpp: "1.6"}
  - {id: e2, node: site, max_import_kw: 11}
  - {id: e3, node: site, max_import_kw: 11, max_export_kw: 11, v2g: true, ocpp: "2.1"}
sessions:
  - {id: s1, evse: e1, arrival: 2026-11-21T04:00:00Z, departure: 2026-11-21T08:00:00Z,
     battery_kwh: 60, soc: 0.3, energy_kwh: 15, max_charge_kw: 11}
  - {id: s2, evse: e2, arrival: 2026-11-21T04:10:00Z, departure: 2026-11-21T08:00:00Z,
     battery_kwh: 60, soc: 0.3, energy_kwh: 15, max_charge_kw: 11}
  - {id: s3, evse: e3, arrival: 2026-11-21T04:20:00Z, departure: 2026-11-21T08:00:00Z,
     battery_kwh: 60, soc: 0.5, energy_kwh: 10, max_charge_kw: 11, max_discharge_kw: 11}
"""

OPENADR = """\
replay: {strategy: lp, step_minutes: 5, horizon_intervals: 16, period_minutes: 15, seed: 3}
dso:
  openadr:
    ven:
      default_nodes: [site]
      programs:
        "oadr://dso/evening": {mandatory: true, simple_levels_kw: {"1": 22, "2": 11}}
    events:
      - at: 2026-11-21T04:20:00Z
        event:
          event_descriptor: {event_id: ev1, modification_number: 0,
                             market_context: "oadr://dso/evening", event_status: far,
                             priority: 0, test_event: false}
          active_period: {dtstart: 2026-11-21T05:00:00Z, duration: PT2H}
          event_signals:
            - signal_name: SIMPLE
              signal_type: level
              signal_id: s0
              intervals:
                - {dtstart: 2026-11-21T05:00:00Z, duration: PT2H, signal_payload: 2, uid: 0}
          targets: [{ven_id: ven-1}]
faults:
  - {kind: link_loss, target: openadr, start: 2026-11-21T07:30:00Z,
     end: 2026-11-21T08:00:00Z}
  - {kind: meter_gap, target: e2, start: 2026-11-21T05:00:00Z, end: 2026-11-21T05:30:00Z}
safe_defaults:
  - {source: openadr, node: site, import_max_kw: 15}
"""


def indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def sep2_document() -> str:
    """The recorded CSIP-AUS DERControl (envoy 2.2.0) and the site's DefaultDERControl."""
    control = (RECORDED / "38_edev1_derp1_derc1_active.xml").read_text().strip()
    default = (RECORDED / "45_edev1_derp1_dderc.xml").read_text().strip()
    return BASE + f"""\
dso:
  ieee2030_5:
    sites:
      - {{site: site, evses: [e1, e2, e3]}}
    programs:
      - id: derp-1
        primacy: 1
        default: |
{indented(default, 10)}
        controls:
          - at: 2026-11-21T05:40:00Z
            xml: |
{indented(control, 14)}
"""


def error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_replay(text, "x.yaml")
    return caught.value


def test_the_sections_become_the_replay_and_its_dso_timeline() -> None:
    run = parse_replay(BASE + OPENADR, "x.yaml")
    assert run.settings.strategy == "lp"
    assert run.settings.step == timedelta(minutes=5)
    assert run.settings.horizon_intervals == 16 and run.settings.seed == 3
    assert [(f.kind, f.target) for f in run.faults] == [("link_loss", "openadr"),
                                                       ("meter_gap", "e2")]
    assert run.safe_defaults[0].import_max_kw == 15.0
    (item,) = run.dso
    assert item.source == "openadr" and item.at == T0 + timedelta(minutes=20)
    period = item.payload["active_period"]
    assert period["dtstart"] == T0 + timedelta(hours=1)
    assert period["duration"] == timedelta(hours=2)
    assert run.feeds is not None and run.feeds.openadr is not None
    assert run.feeds.openadr.randomization_seed == 3  # the replay's seed randomises starts


def test_an_openadr_event_from_the_file_caps_the_site_through_the_ven() -> None:
    result = replay(parse_replay(BASE + OPENADR, "x.yaml"))
    site = result.nodes[result.nodes["node"] == "site"].set_index("at")
    event = site[(site.index >= T0 + timedelta(hours=1)) & (site.index < T0 + timedelta(hours=3))]
    assert (event["import_cap_kw"] == 11.0).all()  # SIMPLE level 2 -> 11 kW
    assert (event["load_kw"] <= 11.0 + 1e-6).all()
    assert result.kpis["cap_violations"] == 0
    assert result.kpis["dr_delivered_kwh"] > 0


def test_the_recorded_csip_aus_control_caps_the_site_while_it_is_active() -> None:
    """The recorded envoy 2.2.0 DERControl: opModImpLimW 700 x10^1 W from 05:45 for 1 h."""
    run = parse_replay(sep2_document(), "sep2.yaml")
    assert run.feeds is not None and len(run.feeds.sep2_programs) == 1
    result = replay(run)
    site = result.nodes[result.nodes["node"] == "site"].set_index("at")
    start = datetime(2026, 11, 21, 5, 45, tzinfo=UTC)
    assert (site.loc[start:start + timedelta(minutes=55), "import_cap_kw"] == 7.0).all()
    assert (site.loc[start:start + timedelta(minutes=55), "load_kw"] <= 7.0 + 1e-6).all()
    assert site.loc[start + timedelta(hours=1), "import_cap_kw"] != 7.0  # the control ended
    assert result.kpis["cap_violations"] == 0


def test_an_iec61850_schedule_from_the_file_is_resolved_by_priority() -> None:
    text = BASE + """\
dso:
  iec61850:
    ieds:
      sub1: {node_id: site, max_power_kw: 500, schedules: [FSCH01, FSCH02]}
    schedules:
      - {at: 2026-11-21T04:00:00Z, ied: sub1, name: FSCH01, priority: 10,
         start: 2026-11-21T05:00:00Z, interval_s: 3600, values_w: [20000, 8000]}
      - {at: 2026-11-21T04:15:00Z, ied: sub1, name: FSCH02, priority: 20,
         start: 2026-11-21T05:30:00Z, interval_s: 1800, values_w: [5000]}
"""
    result = replay(parse_replay(text))
    cap = result.nodes[result.nodes["node"] == "site"].set_index("at")["import_cap_kw"]
    assert cap[T0 + timedelta(hours=1)] == 20.0
    assert cap[T0 + timedelta(hours=1, minutes=30)] == 5.0
    assert cap[T0 + timedelta(hours=2, minutes=30)] == 8.0
    assert result.kpis["cap_violations"] == 0


def test_a_plain_scenario_is_a_replay_with_default_settings(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(BASE)
    run = load_replay(path)
    assert run.feeds is None and run.dso == () and run.faults == ()
    assert run.settings.strategy == "lp"
    # and load_scenario accepts a file with replay sections without reading them
    assert parse_scenario(BASE + OPENADR).name == "replay-sections"


@pytest.mark.parametrize(("section", "path", "reason"), [
    ("replay: {strategy: greedy}", "replay.strategy", "unknown value 'greedy'"),
    ("replay: {step_minutes: 7}", "replay.step_minutes", "must divide interval_minutes"),
    ("replay: {silent_evses: [e9]}", "replay.silent_evses[0]", "unknown EVSE 'e9'"),
    ("replay: {session_defaults: {soc: 1.5}}", "replay.session_defaults.soc", "0..1"),
    ("replay: {speed: 3}", "replay.speed", "unknown key"),
    ("faults: [{kind: flood, target: e1, start: 2026-11-21T05:00:00Z,"
     " end: 2026-11-21T06:00:00Z}]", "faults[0].kind", "unknown value 'flood'"),
    ("faults: [{kind: link_loss, target: e1, start: 2026-11-21T05:00:00Z,"
     " end: 2026-11-21T06:00:00Z}]", "faults[0].target", "names a DSO source"),
    ("faults: [{kind: station_offline, target: e1, start: 2026-11-21T05:00:00Z,"
     " end: 2026-11-21T04:00:00Z}]", "faults[0].end", "must be after start"),
    ("safe_defaults: [{source: openadr, node: nowhere, import_max_kw: 5}]",
     "safe_defaults[0].node", "unknown node"),
    ("safe_defaults: [{source: openadr, node: site}]", "safe_defaults[0].import_max_kw",
     "import_max_kw and/or export_max_kw"),
    ("dso: {modbus: {}}", "dso.modbus", "unknown key"),
])
def test_bad_replay_sections_name_the_field(section: str, path: str, reason: str) -> None:
    err = error(BASE + section + "\n")
    assert err.path == path
    assert reason in err.reason
    assert err.line is not None and err.line > BASE.count("\n")


def test_a_bad_openadr_event_is_refused_where_the_ven_would_refuse_it() -> None:
    err = error(BASE + OPENADR.replace("duration: PT2H, signal_payload: 2",
                                       "duration: PT2H, signal_payload: banana"))
    assert err.path == "dso.openadr.events[0].event.event_signals[0].intervals[0].signal_payload"
    assert err.line == (BASE + OPENADR).splitlines().index(
        "                - {dtstart: 2026-11-21T05:00:00Z, duration: PT2H, signal_payload: 2,"
        " uid: 0}") + 1
    err = error(BASE + OPENADR.replace("duration: PT2H}", "duration: two hours}"))
    assert err.path == "dso.openadr.events[0].event.active_period.duration"
    assert "ISO-8601 duration" in err.reason
    err = error(BASE + OPENADR.replace("default_nodes: [site]", "default_nodes: [attic]"))
    assert err.path == "dso.openadr.ven.default_nodes[0]"
    err = error(BASE + OPENADR.replace("mandatory: true", "mandatory: maybe"))
    assert err.path.startswith("dso.openadr.ven.programs")


def test_a_bad_sep2_control_and_iec_schedule_are_refused_with_their_path() -> None:
    err = error(sep2_document().replace("<DERControl ", "<DERControll ", 1))
    assert err.path == "dso.ieee2030_5.programs[0].controls[0].xml"
    assert "DERControl" in err.reason
    err = error(BASE + """\
dso:
  iec61850:
    ieds: {sub1: {node_id: site, max_power_kw: 50, schedules: [FSCH01]}}
    schedules:
      - {at: 2026-11-21T04:00:00Z, ied: sub1, name: FSCH01, priority: 10,
         start: 2026-11-21T05:00:00Z, interval_s: 3600, values_w: [20000, 80000]}
""")
    assert err.path == "dso.iec61850.schedules[0].values_w[1]"
    assert "max_power_kw" in err.reason
    err = error(BASE + "dso:\n  iec61850:\n    ieds: {sub1: {node_id: site, port: 0}}\n")
    assert err.path == "dso.iec61850.ieds.sub1.port"
    err = error(BASE + "dso:\n  iec61850:\n    ieds: {sub1: {node_id: site}}\n")
    assert err.path == "dso.iec61850.ieds.sub1.limit"  # the adapter's rule: read something
    err = error(BASE + """\
dso:
  iec61850:
    ieds: {sub1: {node_id: site, schedules: [FSCH01]}}
    schedules:
      - {at: 2026-11-21T04:00:00Z, ied: sub1, name: FSCH07, priority: 10,
         start: 2026-11-21T05:00:00Z, interval_s: 3600, values_w: [20000]}
""")
    assert err.path == "dso.iec61850.schedules[0].name"  # not configured: never read


# --- fuzzing: any mutation of a valid file is read or refused with a ScenarioError ----------

def _mutations() -> st.SearchStrategy[tuple[list[str], object]]:
    data = yaml.safe_load(BASE + OPENADR)
    paths: list[list[str]] = []

    def walk(node: object, path: list[str]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, key])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, [*path, index])  # type: ignore[list-item]

    walk(data, [])
    values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                       st.floats(allow_nan=True), st.text(max_size=12),
                       st.lists(st.integers(), max_size=2), st.just({"x": 1}))
    return st.tuples(st.sampled_from(paths[1:]), values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzzed_replay_files_are_read_or_refused_cleanly(mutation: tuple[list[str], object]
                                                         ) -> None:
    path, value = mutation
    data = yaml.safe_load(BASE + OPENADR)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        parse_replay(text, "fuzz.yaml")
    except ScenarioError as err:
        assert err.path and err.reason


PRICE_EVENT = """\
replay: {strategy: lp}
dso:
  openadr:
    ven:
      default_nodes: [site]
      programs: {"oadr://dso/price": {mandatory: true}}
    events:
      - at: 2026-11-21T04:00:00Z
        event:
          event_descriptor: {event_id: p1, modification_number: 0,
                             market_context: "oadr://dso/price", event_status: far}
          active_period: {dtstart: 2026-11-21T04:00:00Z, duration: PT4H}
          event_signals:
            - signal_name: ELECTRICITY_PRICE
              signal_type: price
              signal_id: p0
              intervals:
                - {dtstart: 2026-11-21T04:00:00Z, duration: PT2H, signal_payload: 0.05, uid: 0}
                - {dtstart: 2026-11-21T06:00:00Z, duration: PT2H, signal_payload: 0.90, uid: 1}
          targets: [{ven_id: ven-1}]
"""


def test_dso_sent_prices_are_planned_for_and_costed() -> None:
    """An OpenADR price event (cheap first, dear later): the LP charges in the cheap hours
    and the replay's cost uses the prices the DSO sent, not the scenario's default."""
    result = replay(parse_replay(BASE + PRICE_EVENT))
    evses = result.evses.set_index("at")
    cheap = evses[evses.index < T0 + timedelta(hours=2)]
    dear = evses[evses.index >= T0 + timedelta(hours=2)]
    assert set(cheap["price_per_kwh"][cheap["power_kw"] > 0]) == {0.05}
    assert cheap["power_kw"].clip(lower=0).sum() > dear["power_kw"].clip(lower=0).sum()
    step_h = 5 / 60
    assert result.kpis["cost"] == pytest.approx(
        float((evses["power_kw"] * evses["price_per_kwh"]).sum() * step_h), abs=1e-3)
    # at the scenario's default import price (0.25) the same energy would cost more
    assert result.kpis["cost"] < 0.25 * result.kpis["imported_kwh"]


def test_settlement_comes_from_the_ledger_and_agrees_with_the_plant() -> None:
    """Every metered reading goes through the ledger; settled energy per session equals the
    plant's to the register resolution (1 Wh), and the meter gap is flagged, not filled."""
    result = replay(parse_replay(BASE + OPENADR))
    sessions = result.sessions.set_index("session")
    for name in ("s1", "s2", "s3"):
        row = sessions.loc[name]
        assert row["settled_import_kwh"] == pytest.approx(row["imported_kwh"], abs=0.0011)
        assert row["settled_export_kwh"] == pytest.approx(row["exported_kwh"], abs=0.0011)
    # the faults' 30-minute meter gap on e2, flagged in both registers (import and export)
    assert sessions.loc["s2", "meter_gaps"] == 2
    assert sessions.loc["s1", "meter_gaps"] == 0
    assert result.kpis["meter_gaps"] == 2
    assert result.kpis["settled_export_kwh"] == pytest.approx(
        result.kpis["discharged_kwh"], abs=0.0011 * 3)


def test_a_demand_charge_flattens_the_metered_peak_and_is_costed() -> None:
    """A tariff of 10 per kW on the site's peak over the whole run: the re-plans keep the
    peak already reached (they pay only for more), so the energy is still delivered, the
    metered peak is lower than without the charge, and the replay costs that peak."""
    free_current = BASE.replace("max_import_kw: 11", "max_import_kw: 11, min_current_a: 0")
    settings = "replay: {strategy: lp, session_defaults: {dwell_hours: 4, energy_kwh: 15}}\n"
    charge = ("demand_charges:\n  - {node: site, start: 2026-11-21T04:00:00Z,"
              " end: 2026-11-21T08:00:00Z, price_per_kw: 10}\n")
    charged = replay(parse_replay(free_current + charge + settings))
    free = replay(parse_replay(free_current + settings))
    peak = charged.kpis["peak_kw[site]"]
    assert peak < free.kpis["peak_kw[site]"] - 1.0
    assert charged.kpis["energy_delivered_pct"] >= 99.5
    assert charged.kpis["demand_charge_cost"] == pytest.approx(10 * peak, abs=0.01)
    assert charged.kpis["total_cost"] == pytest.approx(
        charged.kpis["cost"] + charged.kpis["demand_charge_cost"], abs=0.002)
    assert free.kpis["demand_charge_cost"] == 0.0
