"""Reading a solution: node flows, cost terms netted at the meter, binding caps, diagnoses."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.verdict import (
    binding_constraints,
    cap_violations,
    cost_terms,
    node_flow_kw,
    price_warnings,
    window_peaks_kw,
)
from tests.optimizer.conftest import make_problem


def test_node_flow_adds_base_load_over_the_subtree() -> None:
    base = np.zeros((2, 8))
    base[1, :] = 3.0  # the site's own load counts at the feeder too
    p = make_problem(node_base_load_kw=base)
    power = np.zeros((2, 8))
    power[0, 0], power[1, 0] = 5.0, -2.0
    flow = node_flow_kw(p, power)
    assert flow[:, 0].tolist() == [6.0, 6.0]
    assert flow[:, 1].tolist() == [3.0, 3.0]


def test_costs_net_at_the_meter() -> None:
    # 4 kW charging and 6 kW discharging behind one meter: 2 kW exported, nothing bought
    p = make_problem(import_price_per_kwh=np.full(8, 0.3), export_price_per_kwh=np.full(8, 0.1))
    charge, discharge = np.zeros((2, 8)), np.zeros((2, 8))
    charge[0, 3], discharge[1, 3] = 4.0, 6.0
    terms = cost_terms(p, charge, discharge, np.array([0.0, 1.5]))
    assert terms["imported_kwh"] == 0.0
    assert terms["exported_kwh"] == pytest.approx(0.5)  # 2 kW x 0.25 h
    assert terms["export_revenue"] == pytest.approx(0.05)
    assert terms["charged_kwh"] == pytest.approx(1.0) and terms["discharged_kwh"] == 1.5
    assert terms["degradation_cost"] == pytest.approx(1.5 * p.degradation_cost_per_kwh)
    assert terms["unmet_penalty"] == pytest.approx(15.0)


def test_binding_lists_caps_as_interval_ranges_and_short_sessions() -> None:
    cap = np.full((2, 8), np.inf)
    cap[0, [1, 2, 3, 6]] = 4.0
    p = make_problem(node_import_max_kw=cap, node_names=("feeder", "site"),
                     session_names=("a", "b"))
    power = np.zeros((2, 8))
    power[0, [1, 2, 3, 6]] = 4.0
    found = binding_constraints(p, power, np.array([0.0, 2.5]))
    assert found == ("feeder: import cap binds in intervals 1-3, 6",
                     "b: 2.500 kWh unmet at departure")


def test_cap_violations_name_what_cannot_hold() -> None:
    cap = np.full((2, 8), np.inf)
    cap[1, 2] = 1.0
    base = np.zeros((2, 8))
    base[1, 2] = 20.0  # 20 kW base, 11 kW of V2G at most: 9 kW over a 1 kW cap
    p = make_problem(node_import_max_kw=cap, node_base_load_kw=base,
                     node_names=("feeder", "site"))
    assert cap_violations(p) == ("site: import cap below the base load even with full V2G "
                                 "discharge in intervals 2",)
    base[1, 2] = 10.0  # 10 - 11 kW of discharge = -1 kW <= 1 kW: the cap can hold
    assert cap_violations(make_problem(node_import_max_kw=cap, node_base_load_kw=base)) == ()


def test_price_warning_only_when_export_beats_import() -> None:
    assert price_warnings(make_problem()) == ()
    p = make_problem(import_price_per_kwh=np.full(8, 0.2),
                     export_price_per_kwh=np.array([0.1] * 6 + [0.3] * 2))
    assert "intervals 6-7" in price_warnings(p)[0]


def test_window_peaks_are_the_highest_net_import_inside_each_window() -> None:
    """The site's net import (EV power plus base load) peaks at 9 kW inside intervals 2-4;
    the 20 kW at interval 6 lies outside; a window where the feeder exports peaks at 0."""
    base = np.zeros((2, 8))
    base[1, 3] = 4.0
    base[0, 7] = -30.0  # PV at the feeder itself
    p = make_problem(node_base_load_kw=base, peak_node=np.array([1, 0]),
                     peak_start=np.array([2, 7]), peak_end=np.array([5, 8]),
                     peak_price_per_kw=np.array([2.0, 1.0]))
    power = np.zeros((2, 8))
    power[0, 3], power[0, 4], power[0, 6], power[1, 7] = 5.0, 7.0, 20.0, 11.0
    assert window_peaks_kw(p, power).tolist() == [9.0, 0.0]
    terms = cost_terms(p, np.clip(power, 0, None), np.clip(-power, 0, None), np.zeros(2))
    assert terms["demand_charge_cost"] == pytest.approx(18.0)
