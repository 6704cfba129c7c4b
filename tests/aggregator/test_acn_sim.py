"""The ACN-Sim bridge on hand-checkable fleets (1 h periods, 250 V: 4 A = 1 kW)."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from aggregator.acn_sim import (
    ACNPORTAL_REQUIREMENT,
    AcnResult,
    AcnSession,
    AcnSimUnavailableError,
    _ensure_pkg_resources,
    run_acn,
)
from aggregator.model import ModelError
from tests.peers.availability import missing_peer

V = 250.0
PRICES = [0.30, 0.30, 0.10, 0.10, 0.10, 0.10]
# limit 10 kW (40 A); EVSEs 32 A = 8 kW.  Laxity at 0: s1 2 - 0.5 = 1.5, s2 3 - 2 = 1,
# s3 6 - 0.75 = 5.25, so EDF serves s1 first and LLF s2.
FLEET = [
    AcnSession("s1", "a", 0, 2, 4.0, 8.0),
    AcnSession("s2", "b", 0, 3, 16.0, 8.0),
    AcnSession("s3", "c", 0, 6, 6.0, 8.0),
]
EPS_KW = 0.01  # ACN's sorted algorithms bisect to 0.01 A (0.0025 kW here)


def need_acnportal() -> None:
    """Skip without acnportal; under CI=true its absence is a failure."""
    if importlib.util.find_spec("acnportal") is None:
        missing_peer(f"acnportal is not installed (pip install '{ACNPORTAL_REQUIREMENT}')")


def run(sessions: list[AcnSession], algorithms: list[str], *,
        limit_kw: float | None = 10.0, evse_max_a: float = 32.0,
        **kwargs: bool) -> dict[str, AcnResult]:
    results = run_acn(sessions, period_min=60, n_periods=6, voltage_v=V,
                      evse_max_a=evse_max_a, aggregate_limit_kw=limit_kw,
                      import_price_per_kwh=PRICES, algorithms=algorithms, **kwargs)
    assert [r.algorithm for r in results] == algorithms
    return {r.algorithm: r for r in results}


def close(values: tuple[float, ...], expected: list[float]) -> bool:
    return len(values) == len(expected) and all(
        math.isclose(v, e, abs_tol=EPS_KW) for v, e in zip(values, expected, strict=True))


def test_uncontrolled_breaks_the_limit_edf_llf_round_robin_keep_it() -> None:
    need_acnportal()
    results = run(FLEET, ["uncontrolled", "edf", "llf", "round_robin"])
    uncontrolled = results["uncontrolled"]
    # every car at full power until its battery (= its request) is full
    assert close(uncontrolled.power_kw, [18.0, 8.0, 0, 0, 0, 0])
    assert uncontrolled.peak_kw == pytest.approx(18.0)
    assert uncontrolled.periods_over_limit == 1
    for name in ("edf", "llf", "round_robin"):
        result = results[name]
        assert result.error is None
        assert result.peak_kw <= 10.0 + 1e-6 and result.periods_over_limit == 0, name
    for result in results.values():
        assert result.energy_requested_kwh == pytest.approx(26.0)
        # ACN's per-EV count agrees with the power series (1 h periods)
        assert sum(result.power_kw) == pytest.approx(result.energy_delivered_kwh, abs=1e-9)
        assert sum(result.session_delivered_kwh.values()) == pytest.approx(
            result.energy_delivered_kwh)
        for sid, series in result.session_power_kw.items():
            assert sum(series) == pytest.approx(result.session_delivered_kwh[sid], abs=1e-9)
        assert result.cost == pytest.approx(
            sum(kw * p for kw, p in zip(result.power_kw, PRICES, strict=True)))
    for name in ("uncontrolled", "edf", "llf"):
        assert results[name].energy_delivered_kwh == pytest.approx(26.0, abs=1e-3)
        assert results[name].energy_delivered_pct == pytest.approx(100.0, abs=1e-2)
    # Round Robin hands out 0.1 A steps capped by the remaining demand: the last
    # fraction of a step (< 0.025 kWh per car here) is never delivered
    assert 25.9 < results["round_robin"].energy_delivered_kwh < 26.0


def test_edf_serves_the_earliest_deadline_first_and_llf_the_least_laxity() -> None:
    need_acnportal()
    results = run(FLEET, ["edf", "llf"])
    edf, llf = results["edf"].session_power_kw, results["llf"].session_power_kw
    # EDF at 0: s1 (deadline 2) all it needs (4 kWh), s2 (3) the remaining 6 kW, s3 none
    assert close(edf["s1"], [4.0, 0, 0, 0, 0, 0])
    assert close(edf["s2"], [6.0, 8.0, 2.0, 0, 0, 0])
    assert close(edf["s3"], [0.0, 2.0, 4.0, 0, 0, 0])
    # LLF at 0: s2 (laxity 1) its full 8 kW, s1 (1.5) the 2 kW left
    assert close(llf["s2"], [8.0, 8.0, 0, 0, 0, 0])
    assert close(llf["s1"], [2.0, 2.0, 0, 0, 0, 0])
    assert close(llf["s3"], [0.0, 0.0, 6.0, 0, 0, 0])
    assert close(results["edf"].power_kw, [10.0, 10.0, 6.0, 0, 0, 0])
    assert results["edf"].cost == pytest.approx(10 * 0.3 + 10 * 0.3 + 6 * 0.1, abs=0.01)


def test_under_a_tight_limit_edf_leaves_short_the_car_whose_turn_comes_too_late() -> None:
    need_acnportal()
    results = run(FLEET, ["edf", "uncontrolled"], limit_kw=4.0)
    edf = results["edf"]
    # 4 kW in turn: s1 at 0 (done), s2 at 1 and 2 (gone at 3 with 8 of 16 kWh), then s3
    assert close(edf.power_kw, [4.0, 4.0, 4.0, 4.0, 2.0, 0.0])
    assert edf.session_delivered_kwh["s1"] == pytest.approx(4.0, abs=EPS_KW)
    assert edf.session_delivered_kwh["s2"] == pytest.approx(8.0, abs=EPS_KW)  # 2 h x 4 kW
    assert edf.session_delivered_kwh["s3"] == pytest.approx(6.0, abs=EPS_KW)
    assert edf.energy_delivered_pct == pytest.approx(100 * 18 / 26, abs=0.1)
    assert results["uncontrolled"].energy_delivered_pct == pytest.approx(100.0)
    assert results["uncontrolled"].periods_over_limit == 2


def test_amps_become_kw_at_the_given_voltage_and_the_lower_cap_binds() -> None:
    need_acnportal()
    sessions = [AcnSession("x", "a", 1, 4, 100.0, 11.0),  # EVSE cap binds: 16 A = 4 kW
                AcnSession("y", "b", 2, 3, 100.0, 2.5)]  # the car's 2.5 kW binds
    result = run(sessions, ["uncontrolled"], limit_kw=None, evse_max_a=16.0)["uncontrolled"]
    assert close(result.session_power_kw["x"], [0, 4.0, 4.0, 4.0, 0, 0])
    assert close(result.session_power_kw["y"], [0, 0, 2.5, 0, 0, 0])
    assert result.energy_delivered_kwh == pytest.approx(14.5)
    assert result.periods_over_limit == 0


def test_back_to_back_sessions_share_a_station() -> None:
    need_acnportal()
    sessions = [AcnSession("first", "a", 0, 2, 5.0, 8.0),
                AcnSession("second", "a", 2, 5, 3.0, 8.0)]  # arrives as the first leaves
    result = run(sessions, ["edf"], limit_kw=None)["edf"]
    assert close(result.session_power_kw["first"], [5.0, 0, 0, 0, 0, 0])
    assert close(result.session_power_kw["second"], [0, 0, 3.0, 0, 0, 0])
    assert result.energy_delivered_pct == pytest.approx(100.0)


def test_without_ev_limits_edf_reserves_amps_the_car_does_not_draw() -> None:
    need_acnportal()
    sessions = [AcnSession("slow", "a", 0, 2, 8.0, 4.0),  # earliest deadline, 4 kW car
                AcnSession("fast", "b", 0, 6, 20.0, 8.0)]
    known = run(sessions, ["edf"])["edf"]
    blind = run(sessions, ["edf"], ev_limits_known=False)["edf"]
    assert close(known.power_kw[:2], [10.0, 10.0])  # slow 4 kW + fast 6 kW
    # ACN's stock view: at 0 the slow car's pilot is the EVSE's 32 A (8 kW) and it draws
    # 4 kW; at 1 its remaining 4 kWh caps the pilot at 16 A, so nothing is held back
    assert close(blind.session_power_kw["fast"][:2], [2.0, 6.0])
    assert close(blind.power_kw[:2], [6.0, 10.0])


def test_adaptive_without_adacharge_reports_why_and_the_rest_still_run() -> None:
    need_acnportal()
    if importlib.util.find_spec("adacharge") is not None:
        pytest.skip("adacharge is installed here")
    results = run(FLEET, ["adaptive", "edf"])
    adaptive = results["adaptive"]
    assert adaptive.error is not None and "adacharge" in adaptive.error
    assert adaptive.power_kw == () and adaptive.energy_delivered_kwh == 0.0
    assert adaptive.energy_requested_kwh == pytest.approx(26.0)
    assert results["edf"].error is None


def test_no_sessions_gives_a_flat_zero_series() -> None:
    need_acnportal()
    result = run([], ["llf"])["llf"]
    assert result.power_kw == (0.0,) * 6 and result.energy_delivered_pct == 100.0


def test_missing_acnportal_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "acnportal" or m.startswith("acnportal.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "acnportal", None)  # import acnportal -> ImportError
    with pytest.raises(AcnSimUnavailableError, match=r"needs the package acnportal"):
        run(FLEET, ["edf"])


def test_pkg_resources_stand_in_when_setuptools_has_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # as with setuptools >= 81
    _ensure_pkg_resources()
    shim = sys.modules["pkg_resources"]
    assert shim is not None
    assert shim.require("pytest")[0].version == pytest.__version__


@pytest.mark.parametrize(("change", "field"), [
    ({"import_price_per_kwh": [0.1] * 5}, "import_price_per_kwh"),
    ({"algorithms": ["fcfs"]}, "algorithms"),
    ({"aggregate_limit_kw": 0.0}, "aggregate_limit_kw"),
    ({"sessions": [AcnSession("s", "a", 3, 7, 1.0, 1.0)]}, "sessions[0].departure_period"),
    ({"sessions": [AcnSession("s", "a", 0, 2, -1.0, 1.0)]}, "sessions[0].energy_requested_kwh"),
    ({"sessions": [AcnSession("s", "a", 0, 3, 1.0, 1.0), AcnSession("t", "a", 2, 4, 1.0, 1.0)]},
     "sessions"),
    ({"sessions": [AcnSession("s", "a", 0, 3, 1.0, 1.0), AcnSession("s", "b", 0, 3, 1.0, 1.0)]},
     "sessions[1].session_id"),
])
def test_bad_input_names_its_field(change: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "sessions": FLEET, "period_min": 60, "n_periods": 6, "voltage_v": V,
        "evse_max_a": 32.0, "aggregate_limit_kw": 10.0, "import_price_per_kwh": PRICES,
        "algorithms": ["edf"]}
    args.update(change)
    with pytest.raises(ModelError) as err:
        run_acn(**args)  # type: ignore[arg-type]
    assert err.value.field == field
