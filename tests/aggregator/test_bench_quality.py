"""``gridflex bench quality`` on small instances: ACN-Sim's algorithms beside gridflex's."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

import pytest

from aggregator.acn_sim import ALGORITHMS
from aggregator.bench_quality import (
    GRIDFLEX_METHODS,
    PENALTIES,
    bench_quality,
    build_instance,
    check_same_instance,
    run_quality,
    tou_price_per_kwh,
)
from aggregator.planning import build_problem
from tests.aggregator.test_acn_sim import need_acnportal

ROW_KEYS = {"algorithm", "energy_delivered_kwh", "energy_requested_kwh",
            "energy_delivered_pct", "cost", "peak_kw", "periods_over_limit", "run_s",
            "sessions", "seed"}
SESSIONS, SEED = 14, 3


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    """One small bench run shared by the tests (about two seconds)."""
    need_acnportal()
    return run_quality(SESSIONS, SEED, evses=10)


def by_algorithm(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["algorithm"]: row for row in rows
            if "algorithm" in row and "check" not in row}


def test_every_algorithm_has_a_row_with_the_required_keys(rows: list[dict[str, Any]]) -> None:
    found = by_algorithm(rows)
    expected = {f"acn-{name}" for name in ALGORITHMS} | {
        f"gridflex-{name}" for name in GRIDFLEX_METHODS}
    assert set(found) == expected
    (instance,) = [row for row in rows if "instance" in row]
    for name, row in found.items():
        assert set(row) >= ROW_KEYS, name
        assert row["sessions"] == instance["sessions"] and row["seed"] == SEED
        assert row["energy_requested_kwh"] == pytest.approx(instance["energy_requested_kwh"])
        if "error" not in row:
            assert 0.0 <= row["energy_delivered_kwh"] <= row["energy_requested_kwh"] + 1e-9
            assert row["energy_delivered_kwh"] <= instance["energy_deliverable_kwh"] + 1e-6
    assert 0 < instance["sessions"] <= SESSIONS
    assert instance["energy_requested_kwh"] > 0


def test_lp_delivers_at_least_every_limit_keeping_algorithm_and_stays_under_the_limit(
        rows: list[dict[str, Any]]) -> None:
    found = by_algorithm(rows)
    lp = found["gridflex-lp"]
    assert lp["periods_over_limit"] == 0 and lp["status"] == "optimal"
    (instance,) = [row for row in rows if "instance" in row]
    assert lp["peak_kw"] <= instance["aggregate_limit_kw"] + 1e-6
    for name, row in found.items():
        if "error" in row:
            continue
        if row["periods_over_limit"] == 0:
            assert lp["energy_delivered_kwh"] >= row["energy_delivered_kwh"] - 1e-6, name
        else:  # only the uncontrolled rows break the limit, and they are told apart
            assert name.endswith("uncontrolled"), name
    (check,) = [row for row in rows if row.get("check") == "lp_vs_best_acn"]
    assert check["ok"] is True
    assert check["best_acn_algorithm"] in {"acn-edf", "acn-llf", "acn-round_robin"}
    assert check["lp_cost_same_delivery"] <= check["best_acn_cost"] + 1e-6
    best = found[check["best_acn_algorithm"]]
    if lp["energy_delivered_kwh"] <= best["energy_delivered_kwh"] + 1e-6:
        assert lp["cost"] <= best["cost"] + 1e-4  # same energy: never dearer


def test_the_limit_binds_and_uncontrolled_breaks_it(rows: list[dict[str, Any]]) -> None:
    found = by_algorithm(rows)
    assert found["acn-uncontrolled"]["periods_over_limit"] > 0
    assert found["gridflex-lp"]["energy_delivered_kwh"] < \
        found["acn-uncontrolled"]["energy_delivered_kwh"]


def test_both_simulations_agree_on_the_same_rule(rows: list[dict[str, Any]]) -> None:
    """Same instance, same rule, two implementations: the same energy and cost."""
    found = by_algorithm(rows)
    acn, ours = found["acn-uncontrolled"], found["gridflex-uncontrolled"]
    assert ours["energy_delivered_kwh"] == pytest.approx(acn["energy_delivered_kwh"], abs=1e-6)
    assert ours["cost"] == pytest.approx(acn["cost"], abs=1e-6)
    assert ours["peak_kw"] == pytest.approx(acn["peak_kw"], abs=1e-6)
    requested = acn["energy_requested_kwh"]
    for rule in ("edf", "llf"):  # ACN bisects pilots to 0.01 A: a little less at most
        assert found[f"gridflex-{rule}"]["energy_delivered_kwh"] == pytest.approx(
            found[f"acn-{rule}"]["energy_delivered_kwh"], abs=1e-3 * requested), rule


def test_adaptive_without_adacharge_is_a_row_with_an_error(rows: list[dict[str, Any]]) -> None:
    adaptive = by_algorithm(rows)["acn-adaptive"]
    if "error" not in adaptive:
        pytest.skip("adacharge is installed here")
    assert "adacharge" in adaptive["error"]
    assert adaptive["energy_delivered_kwh"] == 0.0


def test_penalty_sweep_delivers_more_as_the_penalty_rises(rows: list[dict[str, Any]]) -> None:
    sweep = [row for row in rows if row.get("check") == "unmet_vs_penalty"]
    assert [row["unmet_penalty_per_kwh"] for row in sweep] == sorted(PENALTIES)
    delivered = [row["energy_delivered_kwh"] for row in sweep]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(delivered))
    (instance,) = [row for row in rows if "instance" in row]
    cheapest = instance["price_min_per_kwh"]
    assert cheapest == min(tou_price_per_kwh(p.start) for p in build_instance(
        SESSIONS, SEED, evses=10).scenario.prices)
    for row in sweep:
        if row["unmet_penalty_per_kwh"] < cheapest:  # charging costs more than the penalty
            assert row["energy_delivered_kwh"] == pytest.approx(0.0, abs=1e-6)
            assert row["cost"] == pytest.approx(0.0, abs=1e-6)
    lp = by_algorithm(rows)["gridflex-lp"]  # default penalty 10: the most the limit allows
    assert delivered[-1] == pytest.approx(lp["energy_delivered_kwh"], abs=1e-6)
    assert delivered[-1] > delivered[0]
    (summary,) = [row for row in rows if row.get("check") == "penalty_sweep"]
    assert summary["ok"] is True


def test_gridflex_sees_exactly_acns_periods_requests_prices_and_limit() -> None:
    instance = build_instance(8, 1)
    problem, _ = build_problem(instance.scenario)
    check_same_instance(problem, instance)  # raises on any difference
    assert [int(t) for t in problem.session_start] == [
        s.arrival_period for s in instance.acn_sessions]
    shifted = replace(instance, prices=(*instance.prices[1:], instance.prices[0] + 1.0))
    with pytest.raises(RuntimeError, match="prices"):
        check_same_instance(problem, shifted)
    other = build_instance(8, 2)
    with pytest.raises(RuntimeError, match="arrival periods, departure periods, requested"):
        check_same_instance(problem, other)


def test_bench_quality_prints_json_lines_and_exits_zero(
        capsys: pytest.CaptureFixture[str]) -> None:
    need_acnportal()
    assert bench_quality(6, 0, json_only=True) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    assert all(isinstance(line, dict) and line["bench"] == "quality" for line in lines)
    assert {line["algorithm"] for line in lines if "algorithm" in line} >= {
        "acn-edf", "gridflex-lp"}
    assert captured.err == ""
