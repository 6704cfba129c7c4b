"""``gridflex bench ocpp``: a handful of stations in a child process against gridflex's CSMS
and dispatch; the figures are the CLI's job, here every station and sample is counted."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from adapters.ocpp.profiles import ProfileRequest, set_charging_profile
from adapters.ocpp.station_fleet import member
from aggregator.bench_ocpp import INTERVAL, OcppBenchSettings, bench_ocpp, fleet_config, plan


@pytest.mark.parametrize("library", [True, False], ids=["library", "compiled"])
def test_six_stations_of_three_versions_connect_answer_every_round_and_meter_once(
        library: bool, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_ocpp([6], 2, True, meter_interval_s=0.5, quiet_s=1.0, horizon_intervals=8,
                      periods=4, library_validation=library, seed=11)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert "error" not in row, row.get("error")
    assert code == 0
    assert (row["stations"], row["stations_connected"]) == (6, 6)
    assert row["versions"] == {"1.6": 2, "2.0.1": 2, "2.1": 2}
    assert row["answered_every_round"] is True
    assert row["not_answered"] == {"baseline": 0, "fanout": 0, "fanout_verify": 0}
    # every acknowledged MeterValues reached the sink once, none twice
    assert row["meter_msgs_acked"] == row["meter_msgs_sent"] > 0
    assert row["meter_samples_at_sink"] == 2 * row["meter_msgs_acked"]
    assert row["meter_duplicates_at_sink"] == 0 and row["meter_exactly_once"] is True
    for name in ("fanout_p50_s", "fanout_p99_s", "fanout_verify_p50_s", "baseline_p50_s",
                 "ratio_to_baseline", "ratio_verify", "meter_msgs_per_s"):
        assert isinstance(row[name], float), name
    assert row["fanout_p50_s"] <= row["fanout_p99_s"]
    assert row["validation"] == ("library" if library else "compiled")


def test_the_csms_expects_exactly_the_stations_the_child_opens() -> None:
    config, evses = fleet_config(OcppBenchSettings(stations=7))
    assert [s.station_id for s in config.stations] == [member(i)[0] for i in range(7)]
    assert all(s.password == member(i)[2] for i, s in enumerate(config.stations))
    units = {evses[s.evses[1]].ocpp_version.value: s.rate_unit for s in config.stations}
    assert units == {"1.6": "A", "2.0.1": "A", "2.1": "W"}


def test_a_plan_has_the_asked_number_of_periods_per_profile_and_is_seeded() -> None:
    _, evses = fleet_config(OcppBenchSettings(stations=3))
    start = datetime(2026, 11, 21, 12, tzinfo=UTC)
    schedule = plan(list(evses), start, 96, 24, random.Random(5))
    again = plan(list(evses), start, 96, 24, random.Random(5))
    assert schedule.power_kw.equals(again.power_kw)
    for evse_id, evse in evses.items():
        payload = set_charging_profile(ProfileRequest(
            evse=evse, power_kw=schedule.power_kw[evse_id], interval=INTERVAL, profile_id=12,
            stack_level=1, purpose="TxDefaultProfile"))
        profile = payload.get("chargingProfile") or payload["csChargingProfiles"]
        periods = profile["chargingSchedule"]
        periods = periods[0] if isinstance(periods, list) else periods
        # equal neighbouring levels merge: at most 24, and a random plan rarely repeats
        assert 20 <= len(periods["chargingSchedulePeriod"]) <= 24


def test_settings_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="periods"):
        OcppBenchSettings(horizon_intervals=8, periods=9)
    with pytest.raises(ValueError, match="stations"):
        OcppBenchSettings(stations=0)
