"""Sweeps: parameters as paths into the scenario document, their cartesian product, and the
same KPIs whether the variants ran serially, on a LocalCluster or on a scheduler by address."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import aggregator.sweep
from aggregator.replay import ReplayScenario
from aggregator.replay_file import parse_replay
from aggregator.scenario_file import ScenarioError
from aggregator.sweep import (
    SweepError,
    SweepRunError,
    build_variants,
    comparable,
    parse_params,
    run_sweep,
    sweep_main,
)

# One feeder, one site under a 25 kW cap from 16:30, four 11 kW EVSEs (one V2G), five
# sessions, 12 intervals of 15 min: small enough to replay in well under a second.
DOCUMENT = """\
name: sweep-small
start: 2026-11-20T16:00:00Z
interval_minutes: 15
intervals: 12
settings:
  unmet_penalty_per_kwh: 10
nodes:
  - {id: feeder, kind: feeder, import_max_kw: 60}
  - {id: site, kind: site, parent: feeder, import_max_kw: 40}
evses:
  - {id: e1, node: site, max_import_kw: 11, ocpp: "1.6"}
  - {id: e2, node: site, max_import_kw: 11}
  - {id: e3, node: site, max_import_kw: 11}
  - {id: e4, node: site, max_import_kw: 11, max_export_kw: 11, v2g: true, ocpp: "2.1"}
sessions:
  - {id: s1, evse: e1, arrival: 2026-11-20T16:00:00Z, departure: 2026-11-20T18:30:00Z,
     battery_kwh: 60, soc: 0.3, energy_kwh: 12, max_charge_kw: 11}
  - {id: s2, evse: e2, arrival: 2026-11-20T16:10:00Z, departure: 2026-11-20T18:50:00Z,
     battery_kwh: 50, soc: 0.4, energy_kwh: 15, max_charge_kw: 11}
  - {id: s3, evse: e3, arrival: 2026-11-20T16:20:00Z, departure: 2026-11-20T17:40:00Z,
     battery_kwh: 40, soc: 0.5, energy_kwh: 8, max_charge_kw: 7.4}
  - {id: s4, evse: e4, arrival: 2026-11-20T16:00:00Z, departure: 2026-11-20T18:50:00Z,
     battery_kwh: 60, soc: 0.6, target_soc: 0.8, max_charge_kw: 11, max_discharge_kw: 11,
     min_soc_v2g: 0.4}
  - {id: s5, evse: e3, arrival: 2026-11-20T17:50:00Z, departure: 2026-11-20T18:55:00Z,
     battery_kwh: 40, soc: 0.2, energy_kwh: 6, max_charge_kw: 11}
constraints:
  - {node: site, start: 2026-11-20T16:30:00Z, end: 2026-11-20T18:00:00Z, import_max_kw: 25,
     source: openadr, ref: evt-1}
replay: {strategy: lp, step_minutes: 5, horizon_intervals: 16, period_minutes: 15, seed: 0}
"""
SOURCE = "sweep-small.yaml"
OFFICE = Path(__file__).resolve().parents[2] / "scenarios" / "office-evening-cap.yaml"
# An OpenADR event through the VEN, as a replay file carries it (scenarios/README.md).
OPENADR = """\
dso:
  openadr:
    ven:
      default_nodes: [site]
      programs:
        "oadr://dso/evening": {mandatory: true, simple_levels_kw: {"1": 22, "2": 11}}
    events:
      - at: 2026-11-20T16:05:00Z
        event:
          event_descriptor: {event_id: ev1, modification_number: 0,
                             market_context: "oadr://dso/evening", event_status: far,
                             priority: 0, test_event: false}
          active_period: {dtstart: 2026-11-20T17:00:00Z, duration: PT1H}
          event_signals:
            - {signal_name: SIMPLE, signal_type: level, signal_id: s0, intervals: [
                {dtstart: 2026-11-20T17:00:00Z, duration: PT1H, signal_payload: 2, uid: 0}]}
          targets: [{ven_id: ven-1}]
"""


def with_a_bad_step(text: str, source: str) -> ReplayScenario:
    """Parses, but the replay itself raises: 7 min steps do not divide 15 min intervals
    (the file's reader refuses such a step, so it is forced here)."""
    run = parse_replay(text, source)
    return replace(run, settings=replace(run.settings, step=timedelta(minutes=7)))


def test_param_values_are_yaml_scalars_in_the_order_given() -> None:
    params = parse_params(["settings.unmet_penalty_per_kwh=150,0.5, 2",
                           "replay.strategy=lp,edf", "nodes[1].import_max_kw=null"])
    assert params == [("settings.unmet_penalty_per_kwh", [150, 0.5, 2]),
                      ("replay.strategy", ["lp", "edf"]), ("nodes[1].import_max_kw", [None])]
    assert [type(v) for v in params[0][1]] == [int, float, int]


@pytest.mark.parametrize(("given", "named"), [
    ("replay.strategy", "replay.strategy"),                 # no '='
    ("replay.strategy=", "replay.strategy"),                # no values
    ("settings.unmet_penalty_per_kwh=1,,2", "settings.unmet_penalty_per_kwh"),  # empty value
    ("nodes[x].import_max_kw=1", "nodes[x].import_max_kw"),  # not an index
    ("settings..unmet_penalty_per_kwh=1", "settings..unmet_penalty_per_kwh"),
    ("nodes[1].import_max_kw=[1", "nodes[1].import_max_kw"),  # not YAML
    ("nodes[1].import_max_kw={a: 1}", "nodes[1].import_max_kw"),  # not a scalar
])
def test_a_bad_param_is_refused_naming_it(given: str, named: str) -> None:
    with pytest.raises(SweepError, match=f"parameter '?{re.escape(named)}"):
        parse_params([given])


def test_a_param_given_twice_is_refused() -> None:
    with pytest.raises(SweepError, match=r"parameter replay\.strategy: given twice"):
        parse_params(["replay.strategy=lp", "replay.strategy=edf"])


@pytest.mark.parametrize(("name", "why"), [
    ("settings.weights.unmet", r"settings\.weights is not in the document"),
    ("nodes[2].import_max_kw", r"nodes\[2\] is out of range \(nodes has 2 entries\)"),
    ("settings[0]", "settings is not a list"),
    ("nodes.import_max_kw", "nodes is not a mapping"),
    ("name.first", "name is not a mapping"),
])
def test_a_path_not_in_the_document_is_refused_naming_the_param(name: str, why: str) -> None:
    with pytest.raises(SweepError, match=f"parameter {re.escape(name)}: {why}"):
        build_variants(DOCUMENT, SOURCE, [(name, [1])])


def test_a_missing_last_key_is_created_so_a_default_can_be_overridden() -> None:
    (variant,) = build_variants(DOCUMENT, SOURCE, [("constraints[0].export_max_kw", [5]),
                                                   ("settings.degradation_cost_per_kwh", [0.5])])
    scenario = variant.run.scenario
    cap = next(c for c in scenario.constraints if c.source_ref == "evt-1")
    assert cap.export_max_kw == 5.0
    assert scenario.settings.degradation_cost_per_kwh == 0.5


@pytest.mark.parametrize(("text", "feeder_kw", "dso_items"), [
    (OFFICE.read_text(), 250, 0), (DOCUMENT + OPENADR, 60, 1)])
def test_a_variant_reads_like_the_file_itself(text: str, feeder_kw: int, dso_items: int) -> None:
    """Loading, setting and dumping the document loses nothing the reader sees: comments,
    quoted OCPP versions, UTC offsets, DSO messages in their protocol's terms."""
    (variant,) = build_variants(text, "x.yaml", [("nodes[0].import_max_kw", [feeder_kw])])
    assert variant.run == parse_replay(text, "x.yaml")
    assert len(variant.run.dso) == dso_items


def test_a_missing_optional_section_is_created() -> None:
    """The shipped scenario has no ``replay:`` section: its defaults can still be swept."""
    (variant,) = build_variants(OFFICE.read_text(), str(OFFICE), [
        ("replay.strategy", ["edf"]), ("replay.session_defaults.soc", [0.5])])
    assert variant.run.settings.strategy == "edf"
    assert variant.run.settings.session_defaults.soc == 0.5


def test_a_misspelt_key_is_refused_naming_the_param() -> None:
    with pytest.raises(SweepError, match=r"parameter setings\.x: setings is not in the"):
        build_variants(DOCUMENT, SOURCE, [("setings.x", [1])])
    with pytest.raises(SweepError, match=r"\[replay\.stratgy=edf\]: replay\.stratgy: "):
        build_variants(DOCUMENT, SOURCE, [("replay.stratgy", ["edf"])])


def test_variants_are_the_cartesian_product_first_param_slowest() -> None:
    variants = build_variants(DOCUMENT, SOURCE, [("replay.strategy", ["edf", "lp"]),
                                                 ("nodes[1].import_max_kw", [30, 35, 40])])
    assert [dict(v.values) for v in variants] == [
        {"replay.strategy": s, "nodes[1].import_max_kw": kw}
        for s in ("edf", "lp") for kw in (30, 35, 40)]
    assert [v.index for v in variants] == list(range(6))
    assert variants[4].source == f"{SOURCE} [replay.strategy=lp, nodes[1].import_max_kw=35]"
    for variant in variants:
        values = dict(variant.values)
        assert variant.run.settings.strategy == values["replay.strategy"]
        rating = next(c for c in variant.run.scenario.constraints
                      if c.node_id == "site" and c.source == "rating")
        assert rating.import_max_kw == values["nodes[1].import_max_kw"]


def test_a_bad_value_fails_before_any_work_naming_the_field_and_the_param(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(run: ReplayScenario) -> dict[str, Any]:
        raise AssertionError("a replay ran although a variant was invalid")

    monkeypatch.setattr(aggregator.sweep, "_replay_kpis", no_work)
    with pytest.raises(SweepError) as caught:
        run_sweep(SOURCE, [("settings.unmet_penalty_per_kwh", [5, -1])], text=DOCUMENT,
                  serial=True)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE} [settings.unmet_penalty_per_kwh=-1]: "
                              "settings.unmet_penalty_per_kwh: ")
    assert isinstance(caught.value.__cause__, ScenarioError)


def test_the_document_itself_is_checked_first_with_its_own_lines() -> None:
    broken = DOCUMENT.replace("intervals: 12", "intervals: 0")
    with pytest.raises(ScenarioError) as caught:
        build_variants(broken, SOURCE, [("replay.strategy", ["lp"])])
    assert caught.value.source == SOURCE
    assert caught.value.path == "intervals"
    assert caught.value.line == 4


def test_a_serial_sweep_gives_one_row_per_variant_params_first() -> None:
    frame = run_sweep(SOURCE, [("replay.strategy", ["uncontrolled", "lp"])], text=DOCUMENT,
                      serial=True)
    assert list(frame.columns[:2]) == ["replay.strategy", "scenario"]
    assert list(frame["replay.strategy"]) == ["uncontrolled", "lp"]
    assert list(frame["strategy"]) == ["uncontrolled", "lp"]
    uncontrolled, planned = frame.to_dict("records")
    assert uncontrolled["cap_violations"] > 0  # all four at full power break the 25 kW cap
    assert planned["cap_violations"] == 0
    assert set(comparable(frame).columns) == set(frame.columns) - {"solve_p50_s",
                                                                   "solve_max_s"}


def test_a_failing_replay_names_its_variant() -> None:
    with pytest.raises(SweepRunError, match=r"\[replay.strategy=edf\]: the replay failed: "
                                            r"ValueError: step"):
        run_sweep(SOURCE, [("replay.strategy", ["edf"])], text=DOCUMENT, serial=True,
                  parse=with_a_bad_step)


@pytest.mark.slow
def test_a_local_cluster_gives_the_serial_results() -> None:
    params: list[tuple[str, list[Any]]] = [("replay.strategy", ["edf", "lp"]),
                                           ("nodes[1].import_max_kw", [22, 40])]
    serial = run_sweep(SOURCE, params, text=DOCUMENT, serial=True)
    fanned = run_sweep(SOURCE, params, text=DOCUMENT, workers=2)
    pd.testing.assert_frame_equal(comparable(fanned), comparable(serial))
    assert len(comparable(serial).drop_duplicates()) == 4  # four different results


@pytest.mark.slow
def test_a_scheduler_by_address_gives_the_serial_results_and_keeps_running() -> None:
    from distributed import Client, LocalCluster

    params: list[tuple[str, list[Any]]] = [("replay.strategy", ["llf", "lp"]),
                                           ("settings.unmet_penalty_per_kwh", [0, 10])]
    serial = run_sweep(SOURCE, params, text=DOCUMENT, serial=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                      dashboard_address=None) as cluster:
        remote = run_sweep(SOURCE, params, text=DOCUMENT, scheduler=cluster.scheduler_address)
        pd.testing.assert_frame_equal(comparable(remote), comparable(serial))
        with pytest.raises(SweepRunError, match=r"\[replay.strategy=lp\]: the replay failed"):
            run_sweep(SOURCE, [("replay.strategy", ["lp"])], text=DOCUMENT,
                      scheduler=cluster.scheduler_address, parse=with_a_bad_step)
        with Client(cluster.scheduler_address,  # type: ignore[no-untyped-call]
                    set_as_default=False) as client:
            assert len(client.scheduler_info()["workers"]) == 1  # the sweep left it running


def test_sweep_main_prints_json_lines_and_writes_parquet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(DOCUMENT)
    out = tmp_path / "out"
    code = sweep_main(path, ["replay.strategy=edf,lp"], serial=True, out_dir=out,
                      as_json=True)
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["replay.strategy"] for line in lines] == ["edf", "lp"]
    assert all(line["cap_violations"] == 0 for line in lines)
    stored = pd.read_parquet(out / "sweep.parquet")
    assert list(stored["replay.strategy"]) == ["edf", "lp"]
    assert list(stored["energy_delivered_kwh"]) == [line["energy_delivered_kwh"]
                                                    for line in lines]


def test_sweep_main_exits_1_when_a_variant_breaks_a_cap(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(DOCUMENT)
    code = sweep_main(path, ["replay.strategy=lp,uncontrolled", "evses[1].ocpp=2.0.1,1.6"],
                      serial=True, out_dir=tmp_path / "out")
    assert code == 1
    table = capsys.readouterr().out
    assert "uncontrolled" in table and "cap_violations" in table
    stored = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert list(stored["cap_violations"] > 0) == [False, False, True, True]
    # a column mixing a string and a YAML number is stored as written
    assert list(stored["evses[1].ocpp"]) == ["2.0.1", "1.6", "2.0.1", "1.6"]


@pytest.mark.parametrize(("params", "named"), [
    (["nodes[7].import_max_kw=10"], "nodes[7].import_max_kw"),
    (["replay.strategy=lp", "settings.unmet_penalty_per_kwh=true"],
     "settings.unmet_penalty_per_kwh"),
    (["replay.strategy"], "replay.strategy"),
    (["replay.strategy=lp,fastest"], "replay.strategy=fastest"),
])
def test_sweep_main_exits_2_on_bad_input_naming_the_param(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], params: list[str],
        named: str) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(DOCUMENT)
    code = sweep_main(path, params, serial=True, out_dir=tmp_path / "out")
    assert code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_main_exits_2_on_a_missing_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = sweep_main(tmp_path / "nope.yaml", ["replay.strategy=lp"], serial=True,
                      out_dir=tmp_path / "out")
    assert code == 2
    assert "nope.yaml: <document>: cannot read the file" in capsys.readouterr().err


def test_sweep_main_exits_2_on_a_bad_scheduler_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(DOCUMENT)
    code = sweep_main(path, ["replay.strategy=lp"], scheduler="nonsense://x",
                      out_dir=tmp_path / "out")
    assert code == 2
    assert "--scheduler nonsense://x: cannot connect" in capsys.readouterr().err
