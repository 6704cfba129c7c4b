"""``gridflex bench e2e``: a real openleadr VTN, ``gridflex serve`` in its own process and
simulated OCPP stations; few stations and rounds here (the figures are the CLI's job)."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib

import pytest
import tomli_w

from aggregator.bench_e2e import (
    PROGRAM,
    Acceptances,
    E2eSettings,
    fleet,
    service_config,
)
from aggregator.cli import main
from aggregator.service_config import service_config_from_mapping


def test_the_fleet_is_seeded_and_mixes_versions_with_v2g_only_on_2_1() -> None:
    settings = E2eSettings(stations=120, seed=3)
    members = fleet(settings)
    assert members == fleet(settings)
    assert fleet(E2eSettings(stations=120, seed=4)) != members
    assert {m.version for m in members} == {"1.6", "2.0.1", "2.1"}
    assert any(m.v2g for m in members) and all(m.version == "2.1" for m in members if m.v2g)
    assert [m.site for m in members].count("site-001") == 50
    assert len({m.station_id for m in members}) == 120


def test_the_written_configuration_is_one_gridflex_serve_accepts(tmp_path: object) -> None:
    settings = E2eSettings(stations=7)
    members = fleet(settings)
    table = service_config(settings, members, vtn_url="http://127.0.0.1:9/OpenADR2/Simple/2.0b",
                           ocpp_port=9001, api_port=9002, workdir=tmp_path)  # type: ignore[arg-type]
    config = service_config_from_mapping(tomllib.loads(tomli_w.dumps(table)))
    assert len(config.stations) == 7 and config.ocpp_port == 9001 and config.api_port == 9002
    assert config.openadr is not None
    levels = config.openadr.programs[PROGRAM].simple_levels_kw
    assert levels == {1: pytest.approx(0.5 * 77.0, abs=0.05), 2: pytest.approx(0.3 * 77.0,
                                                                               abs=0.05)}
    assert config.controller.period_s == 3600.0  # no timer plan inside a round


def test_acceptances_wait_for_every_station_and_time_the_first_answer_after_a_start() -> None:
    seen = Acceptances(["a", "b"])

    async def main() -> tuple[float, int, int]:
        seen.record("a")  # before the round: not counted
        start = seen.arm()
        seen.record("a")
        missing = await seen.wait_all(0.05)
        seen.record("b")
        time.sleep(0.01)
        seen.record("b")  # b's second answer: not its first
        return start, missing, await seen.wait_all(0.05)

    start, missing, after = asyncio.run(main())
    assert missing == 1 and after == 0
    assert seen.first_since(start) == [seen.times["a"][1] - start, seen.times["b"][0] - start]
    assert seen.last() == seen.times["b"][1]


def test_settings_are_checked() -> None:
    for bad in ({"stations": 0}, {"rounds": 0}, {"poll_interval_s": 0.5}, {"method": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            E2eSettings(**bad)  # type: ignore[arg-type]


def test_bad_station_counts_are_refused_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "e2e", "--stations", "ten"]) == 2
    assert "--stations" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_e2e_runs_end_to_end_and_prints_one_line_per_round_kind(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "e2e", "--stations", "6", "--rounds", "2", "--horizon", "16",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["dso-event", "operator-replan"]
    for row in rows:
        assert row["stations"] == 6 and row["rounds"] == row["rounds_complete"] == 2
        assert 0 < row["latency_p50_s"] <= row["latency_p99_s"] < 60
        assert row["station_latency_p50_s"] <= row["latency_p99_s"]
        assert row["stray_plans"] == 0 and row["not_accepted"] == 0
        assert row["solve_p50_s"] > 0 and row["dispatch_p50_s"] > 0
    event, baseline = rows
    # the event reached the book through the VEN's poll: after the VTN had it, within
    # about one poll interval (plus the service's own work)
    assert 0 <= event["trigger_p50_s"] < event["poll_interval_s"] + 5
    assert baseline["ratio_to_baseline"] == 1.0
    assert event["ratio_to_baseline"] == pytest.approx(
        event["latency_p50_s"] / baseline["latency_p50_s"], rel=0.01)
