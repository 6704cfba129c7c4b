"""FlexProblem validation: inconsistent arrays are refused with the field named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from optimizer.problem import ProblemError
from tests.optimizer.conftest import make_problem


@pytest.mark.parametrize(("field", "value", "message"), [
    ("interval_h", 0.0, "interval_h"),
    ("node_parent", np.array([-1, 0, 0]), "node_import_max_kw: expected shape"),  # N from it
    ("node_parent", np.array([1, 0]), "node_parent: cycle"),
    ("node_parent", np.array([-1, 5]), "node_parent: index out of range"),
    ("node_import_max_kw", np.full((2, 8), np.nan), "node_import_max_kw"),
    ("node_export_max_kw", np.full((2, 8), -1.0), "node_export_max_kw"),
    ("node_setpoint_kw", np.full((2, 8), np.inf), "node_setpoint_kw"),
    ("evse_node", np.array([0, 7]), "evse_node"),
    ("evse_import_max_kw", np.full((2, 7), 11.0), "evse_import_max_kw: expected shape"),
    ("session_evse", np.array([0, 3]), "session_evse"),
    ("session_end", np.array([9, 8]), "session_start"),
    ("session_start", np.array([0, 9]), "session_start"),  # start after end
    ("session_energy_initial_kwh", np.array([60.0, 30.0]), "session_energy_initial_kwh"),
    ("session_energy_target_kwh", np.array([15.0, 61.0]), "session_energy_target_kwh"),
    ("session_charge_efficiency", np.array([0.0, 0.9]), "session_charge_efficiency"),
    ("session_discharge_efficiency", np.array([0.9, 1.2]), "session_discharge_efficiency"),
    ("import_price_per_kwh", np.full(8, np.nan), "import_price_per_kwh"),
    ("unmet_penalty_per_kwh", -1.0, "unmet_penalty_per_kwh"),
    ("node_names", ("only-one",), "node_names"),
])
def test_bad_arrays_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        make_problem(**{field: value})


def test_two_sessions_on_one_evse_may_not_overlap() -> None:
    with pytest.raises(ProblemError, match="overlap"):
        make_problem(session_evse=np.array([0, 0]))
    back_to_back = make_problem(session_evse=np.array([0, 0]), session_start=np.array([0, 4]),
                                session_end=np.array([4, 8]))
    assert back_to_back.n_sessions == 2


def test_derived_views() -> None:
    p = make_problem()
    charge = p.session_charge_kw()
    assert charge[1, :2].tolist() == [0.0, 0.0]  # not plugged in yet
    assert charge[1, 2] == 11.0
    assert p.session_discharge_kw()[0].max() == 0.0  # the plain EVSE cannot discharge
    assert p.subtree_matrix().tolist() == [[True, True], [False, True]]
    assert p.meter_nodes().tolist() == [1]
    tie = p.tie_break_weights()
    assert tie.max() <= 2e-6 and np.all(np.diff(tie, axis=1) > 0)  # earlier is cheaper


def one_window(**overrides: Any) -> dict[str, Any]:
    """A demand charge of 3 per kW on the site (node 1) over intervals 2-5."""
    fields: dict[str, Any] = {"peak_node": np.array([1]), "peak_start": np.array([2]),
                              "peak_end": np.array([6]), "peak_price_per_kw": np.array([3.0])}
    fields.update(overrides)
    return fields


@pytest.mark.parametrize(("overrides", "message"), [
    ({"peak_node": np.array([2])}, "peak_node: index out of range"),
    ({"peak_node": np.array([-1])}, "peak_node: index out of range"),
    ({"peak_start": np.array([6])}, "peak_start: need 0 <= peak_start < peak_end"),  # empty
    ({"peak_end": np.array([9])}, "peak_start: need 0 <= peak_start < peak_end <= T"),
    ({"peak_start": np.array([2.0])}, "peak_start: must be an integer array"),
    ({"peak_end": np.array([6, 7])}, r"peak_end: expected shape \(1,\)"),
    ({"peak_price_per_kw": np.array([-1.0])}, "peak_price_per_kw: values must be >= 0"),
    ({"peak_price_per_kw": np.array([np.inf])}, "peak_price_per_kw: values must be finite"),
    ({"peak_price_per_kw": np.array([np.nan])}, "peak_price_per_kw: values must be finite"),
])
def test_bad_demand_charge_windows_name_the_field(overrides: dict[str, Any],
                                                  message: str) -> None:
    """A window off the tree or the horizon, or a negative price (an LP that pays for a
    higher peak is unbounded), is refused before any solver sees it."""
    with pytest.raises(ProblemError, match=message):
        make_problem(**one_window(**overrides))


def test_demand_charge_windows_default_to_none_and_mask_their_intervals() -> None:
    """No demand charge unless given; a given window covers ``[peak_start, peak_end)``."""
    assert make_problem().n_peaks == 0 and make_problem().peak_mask().shape == (0, 8)
    p = make_problem(**one_window())
    assert p.n_peaks == 1
    assert p.peak_mask().tolist() == [[False, False, True, True, True, True, False, False]]
