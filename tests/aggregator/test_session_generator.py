"""Seeded session generation: determinism, placement on EVSEs, windows, validation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.model import Evse, ModelError, OcppVersion, Session, sessions_by_evse
from aggregator.session_generator import SOC_MAX, SOC_MIN, SessionGenerator, generate_sessions

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 07:00 in California
END = START + timedelta(hours=24)
EVSES = tuple(Evse(f"evse-{i:02d}", "site", 11.0) for i in range(40))
V2G = Evse("v2g-0", "site", 11.0, max_export_kw=7.0, v2g_capable=True,
           ocpp_version=OcppVersion.V21)


def check_valid(sessions: tuple[Session, ...], generator: SessionGenerator,
                evses: tuple[Evse, ...], start: datetime, end: datetime) -> None:
    """Every property ``generate_sessions`` promises, on one result."""
    assert len(sessions) <= generator.count
    sessions_by_evse(sessions)  # raises on an overlap at one EVSE
    known = {evse.evse_id: evse for evse in evses}
    assert [s.arrival for s in sessions] == sorted(s.arrival for s in sessions)
    for i, s in enumerate(sessions):
        assert s.session_id == f"g-{i:04d}"
        assert start <= s.arrival < s.departure <= end
        assert (s.arrival - start) % timedelta(minutes=1) == timedelta(0)
        assert (s.departure - start) % timedelta(minutes=1) == timedelta(0)
        assert s.departure - s.arrival >= timedelta(hours=generator.min_dwell_h)
        assert s.energy_requested_kwh is not None
        assert 0.0 <= s.energy_requested_kwh <= s.battery_capacity_kwh * (1 - s.soc_initial)
        assert SOC_MIN <= s.soc_initial <= SOC_MAX
        evse = known[s.evse_id]
        assert s.max_charge_kw <= evse.max_import_kw
        if not evse.can_discharge:
            assert s.max_discharge_kw == 0.0


def test_same_seed_same_sessions_other_seed_other_sessions() -> None:
    first = generate_sessions(SessionGenerator(30, seed=4), EVSES, START, END)
    again = generate_sessions(SessionGenerator(30, seed=4), EVSES, START, END)
    other = generate_sessions(SessionGenerator(30, seed=5), EVSES, START, END)
    assert first == again
    assert len(first) == 30
    assert first != other


def test_sessions_fit_window_battery_and_never_overlap() -> None:
    generator = SessionGenerator(40, seed=1)
    sessions = generate_sessions(generator, EVSES[:20], START, END)
    check_valid(sessions, generator, EVSES[:20], START, END)
    # 40 sessions on 20 EVSEs: some EVSEs serve a second car after the first left
    grouped = sessions_by_evse(sessions)
    assert any(len(items) > 1 for items in grouped.values())


def test_defaults_look_like_workplace_charging() -> None:
    evses = tuple(Evse(f"evse-{i:03d}", "site", 11.0) for i in range(400))
    sessions = generate_sessions(SessionGenerator(400, seed=2), evses, START, END)
    dwell_h = sorted((s.departure - s.arrival) / timedelta(hours=1) for s in sessions)
    energy = sorted(s.energy_requested_kwh or 0.0 for s in sessions)
    assert len(sessions) == 400
    assert 6.0 < dwell_h[200] < 8.0  # median 7 h
    assert 8.0 < energy[200] < 12.0  # median 10 kWh


def test_a_session_without_a_free_evse_is_left_out_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    one = (EVSES[0],)
    generator = SessionGenerator(5, seed=3, arrival_sd_h=0.0, dwell_sigma=0.0)
    with caplog.at_level(logging.INFO, logger="aggregator.session_generator"):
        sessions = generate_sessions(generator, one, START, END)
    # all arrive at 08:00 local and stay 7 h: only the first gets the EVSE
    assert len(sessions) == 1
    assert sessions[0].arrival == START + timedelta(hours=1)
    assert sessions[0].departure == START + timedelta(hours=8)
    assert "4 of 5 sessions found no free EVSE" in caplog.text
    assert generate_sessions(generator, (), START, END) == ()


def test_arrivals_and_departures_are_clipped_into_the_window() -> None:
    end = START + timedelta(hours=2)
    generator = SessionGenerator(20, seed=6, arrival_mean_h=-5.0, arrival_sd_h=4.0,
                                 dwell_median_h=30.0)
    sessions = generate_sessions(generator, EVSES, START, end)
    check_valid(sessions, generator, EVSES, START, end)
    assert sessions[0].arrival == START  # drawn before the window
    assert all(s.departure == end for s in sessions)  # 30 h dwell ends at the window's end


def test_discharge_is_offered_only_where_the_evse_can_discharge() -> None:
    generator = SessionGenerator(2, seed=0, max_discharge_kw=10.0, arrival_sd_h=0.0)
    sessions = generate_sessions(generator, (V2G, EVSES[0]), START, END)
    by_evse = {s.evse_id: s for s in sessions}
    assert by_evse["v2g-0"].max_discharge_kw == 7.0  # capped by the EVSE's export rating
    assert by_evse["evse-00"].max_discharge_kw == 0.0


@pytest.mark.parametrize(("field", "value"), [
    ("count", -1), ("count", 2.5), ("seed", -3), ("arrival_sd_h", -0.1),
    ("arrival_mean_h", float("nan")), ("dwell_median_h", 0.0), ("dwell_sigma", -1.0),
    ("energy_median_kwh", 0.0), ("energy_sigma", float("inf")), ("battery_kwh", 0.0),
    ("soc_mean", 1.5), ("soc_sd", -0.1), ("max_charge_kw", 0.0), ("max_discharge_kw", -1.0),
    ("min_soc_v2g", 2.0), ("min_dwell_h", 0.0), ("battery_kwh", True), ("dwell_sigma", "1"),
])
def test_bad_parameter_names_its_field(field: str, value: object) -> None:
    args: dict[str, object] = {"count": 3, field: value}
    with pytest.raises(ModelError) as err:
        SessionGenerator(**args)  # type: ignore[arg-type]
    assert err.value.field == field


def test_bad_window_or_evses_are_refused() -> None:
    generator = SessionGenerator(3)
    with pytest.raises(ModelError) as err:
        generate_sessions(generator, EVSES, START, START + timedelta(minutes=10))
    assert err.value.field == "end"
    with pytest.raises(ModelError) as err:
        generate_sessions(generator, EVSES, START.replace(tzinfo=None), END)
    assert err.value.field == "start"
    with pytest.raises(ModelError) as err:
        generate_sessions(generator, (EVSES[0], EVSES[0]), START, END)
    assert err.value.field == "evses"


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(0, 60), seed=st.integers(0, 2**32),
    arrival_mean_h=finite, arrival_sd_h=st.floats(0, 1e6),
    dwell_median_h=st.floats(1e-6, 1e6), dwell_sigma=st.floats(0, 50),
    energy_median_kwh=st.floats(1e-6, 1e6), energy_sigma=st.floats(0, 50),
    battery_kwh=st.floats(0.1, 1e4), soc_mean=st.floats(0, 1), soc_sd=st.floats(0, 10),
    max_charge_kw=st.floats(1e-3, 1e3), max_discharge_kw=st.floats(0, 1e3),
    min_soc_v2g=st.floats(0, 1), min_dwell_h=st.floats(1e-3, 30),
    window_min=st.integers(1, 3 * 24 * 60), n_evses=st.integers(0, 8),
)
def test_any_valid_parameters_give_valid_sessions(
        count: int, seed: int, arrival_mean_h: float, arrival_sd_h: float,
        dwell_median_h: float, dwell_sigma: float, energy_median_kwh: float,
        energy_sigma: float, battery_kwh: float, soc_mean: float, soc_sd: float,
        max_charge_kw: float, max_discharge_kw: float, min_soc_v2g: float,
        min_dwell_h: float, window_min: int, n_evses: int) -> None:
    generator = SessionGenerator(
        count=count, seed=seed, arrival_mean_h=arrival_mean_h, arrival_sd_h=arrival_sd_h,
        dwell_median_h=dwell_median_h, dwell_sigma=dwell_sigma,
        energy_median_kwh=energy_median_kwh, energy_sigma=energy_sigma,
        battery_kwh=battery_kwh, soc_mean=soc_mean, soc_sd=soc_sd,
        max_charge_kw=max_charge_kw, max_discharge_kw=max_discharge_kw,
        min_soc_v2g=min_soc_v2g, min_dwell_h=min_dwell_h)
    evses = (V2G, *EVSES[:n_evses])
    end = START + timedelta(minutes=window_min)
    if window_min < min_dwell_h * 60 - 1e-9:
        with pytest.raises(ModelError) as err:
            generate_sessions(generator, evses, START, end)
        assert err.value.field == "end"
        return
    sessions = generate_sessions(generator, evses, START, end)
    check_valid(sessions, generator, evses, START, end)
