"""Domain objects validate themselves and name the offending field (``ModelError.field``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from aggregator.model import (
    DemandCharge,
    Evse,
    GridConstraint,
    GridNode,
    GridTree,
    ModelError,
    NodeKind,
    NodeLoad,
    OcppVersion,
    PriceSignal,
    Schedule,
    Session,
    require_utc,
    sessions_by_evse,
)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NAIVE = datetime(2026, 11, 20, 12, 0)
PLUS_ONE = datetime(2026, 11, 20, 13, 0, tzinfo=timezone(timedelta(hours=1)))  # = T0


def hours(h: float) -> timedelta:
    return timedelta(hours=h)


def expect_field(field_name: str, make: Callable[[], object]) -> ModelError:
    """``make()`` must raise ModelError naming ``field_name`` (attribute and message)."""
    with pytest.raises(ModelError) as caught:
        make()
    assert caught.value.field == field_name
    assert str(caught.value).startswith(f"{field_name}: ")
    return caught.value


# --- Evse -------------------------------------------------------------------------------

def evse(**overrides: Any) -> Evse:
    values: dict[str, Any] = {"evse_id": "A-01", "node_id": "site-a", "max_import_kw": 11.0}
    values.update(overrides)
    return Evse(**values)


@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"evse_id": ""}, "evse_id"),
    ({"evse_id": "   "}, "evse_id"),
    ({"node_id": ""}, "node_id"),
    ({"max_import_kw": -1.0}, "max_import_kw"),
    ({"max_import_kw": float("nan")}, "max_import_kw"),
    ({"max_import_kw": float("inf")}, "max_import_kw"),
    ({"max_import_kw": "11"}, "max_import_kw"),
    ({"max_import_kw": True}, "max_import_kw"),
    ({"max_export_kw": -0.5}, "max_export_kw"),
    ({"phases": 2}, "phases"),
    ({"voltage_v": 0.5}, "voltage_v"),
    ({"min_current_a": -6.0}, "min_current_a"),
    ({"ocpp_version": "3.0"}, "ocpp_version"),
    ({"v2g_capable": True, "ocpp_version": OcppVersion.V201}, "v2g_capable"),
    ({"v2g_capable": True, "ocpp_version": "1.6"}, "v2g_capable"),
    ({"max_export_kw": 10.0}, "max_export_kw"),  # export without v2g_capable
])
def test_evse_validation_names_the_field(overrides: dict[str, Any], field_name: str) -> None:
    expect_field(field_name, lambda: evse(**overrides))


def test_evse_accepts_version_strings_and_v2g_on_ocpp_21() -> None:
    unit = evse(max_export_kw=10.0, v2g_capable=True, ocpp_version="2.1")
    assert unit.ocpp_version is OcppVersion.V21
    assert unit.can_discharge
    assert not evse(v2g_capable=True, ocpp_version="2.1").can_discharge  # no export rating


@pytest.mark.parametrize(("phases", "min_current_a", "voltage_v", "expected_kw"), [
    (3, 6.0, 230.0, 4.14),  # 6 A x 3 phases x 230 V
    (1, 6.0, 230.0, 1.38),  # 6 A x 1 phase x 230 V
    (3, 16.0, 230.0, 11.04),  # 16 A x 3 x 230 V
    (3, 0.0, 230.0, 0.0),
])
def test_evse_min_power_kw(phases: int, min_current_a: float, voltage_v: float,
                           expected_kw: float) -> None:
    unit = evse(phases=phases, min_current_a=min_current_a, voltage_v=voltage_v)
    assert unit.min_power_kw == pytest.approx(expected_kw)


def test_evse_default_min_power_is_4_14_kw() -> None:
    assert evse().min_power_kw == pytest.approx(6 * 3 * 230 / 1000) == pytest.approx(4.14)


# --- Session ----------------------------------------------------------------------------

def session(**overrides: Any) -> Session:
    values: dict[str, Any] = {
        "session_id": "s-1", "evse_id": "A-01", "arrival": T0, "departure": T0 + hours(4),
        "battery_capacity_kwh": 60.0, "soc_initial": 0.3, "max_charge_kw": 11.0,
        "energy_requested_kwh": 10.0}
    values.update(overrides)
    return Session(**values)


@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"session_id": ""}, "session_id"),
    ({"evse_id": " "}, "evse_id"),
    ({"arrival": NAIVE}, "arrival"),
    ({"arrival": PLUS_ONE}, "arrival"),
    ({"arrival": "2026-11-20T12:00:00Z"}, "arrival"),
    ({"departure": NAIVE + hours(4)}, "departure"),
    ({"departure": PLUS_ONE + hours(4)}, "departure"),
    ({"departure": T0}, "departure"),  # equal to arrival
    ({"departure": T0 - hours(1)}, "departure"),
    ({"battery_capacity_kwh": 0.05}, "battery_capacity_kwh"),
    ({"soc_initial": 1.2}, "soc_initial"),
    ({"soc_initial": -0.1}, "soc_initial"),
    ({"max_charge_kw": -1.0}, "max_charge_kw"),
    ({"max_discharge_kw": -1.0}, "max_discharge_kw"),
    ({"min_soc_v2g": 1.5}, "min_soc_v2g"),
    ({"charge_efficiency": 0.0}, "charge_efficiency"),
    ({"discharge_efficiency": 1.1}, "discharge_efficiency"),
    ({"target_soc": 0.8}, "energy_requested_kwh"),  # both given
    ({"energy_requested_kwh": None}, "energy_requested_kwh"),  # neither given
    ({"energy_requested_kwh": -1.0}, "energy_requested_kwh"),
    ({"energy_requested_kwh": 42.5}, "energy_requested_kwh"),  # 60 * (1 - 0.3) = 42 free
    ({"energy_requested_kwh": None, "target_soc": 1.5}, "target_soc"),
    ({"max_soc": 1.2}, "max_soc"),
])
def test_session_validation_names_the_field(overrides: dict[str, Any], field_name: str) -> None:
    expect_field(field_name, lambda: session(**overrides))


def test_session_energy_target_from_energy_requested() -> None:
    s = session(battery_capacity_kwh=60.0, soc_initial=0.3, energy_requested_kwh=10.0)
    assert s.energy_initial_kwh == pytest.approx(18.0)  # 60 * 0.3
    assert s.energy_target_kwh == pytest.approx(28.0)  # 18 + 10


def test_session_energy_request_that_fills_the_battery_exactly_is_accepted() -> None:
    s = session(battery_capacity_kwh=60.0, soc_initial=0.3, energy_requested_kwh=42.0)
    assert s.energy_target_kwh == pytest.approx(60.0)


def test_session_energy_target_from_target_soc() -> None:
    s = session(energy_requested_kwh=None, target_soc=0.8)
    assert s.energy_target_kwh == pytest.approx(48.0)  # 60 * 0.8


def test_session_target_soc_below_current_soc_keeps_what_is_there() -> None:
    s = session(soc_initial=0.5, energy_requested_kwh=None, target_soc=0.3)
    assert s.energy_target_kwh == pytest.approx(30.0)  # 60 * 0.5, not 60 * 0.3


def test_session_energy_ceiling_is_the_target_unless_the_ev_takes_more() -> None:
    assert session(soc_initial=0.3, energy_requested_kwh=10.0).energy_ceiling_kwh == \
        pytest.approx(28.0)  # the target
    assert session(soc_initial=0.3, energy_requested_kwh=10.0, max_soc=0.9) \
        .energy_ceiling_kwh == pytest.approx(54.0)
    assert session(soc_initial=0.7, energy_requested_kwh=1.0, max_soc=0.5) \
        .energy_ceiling_kwh == pytest.approx(43.0)  # never below the target
    assert session(soc_initial=0.1, energy_requested_kwh=1.0, min_soc_v2g=0.3) \
        .energy_ceiling_kwh == pytest.approx(18.0)  # nor below the V2G floor


def test_session_energy_floor_and_utc_normalisation() -> None:
    utc_zero = timezone(timedelta(0))
    s = session(min_soc_v2g=0.25, arrival=T0.astimezone(utc_zero))
    assert s.energy_floor_kwh == pytest.approx(15.0)  # 60 * 0.25
    assert s.arrival == T0
    assert s.arrival.utcoffset() == timedelta(0)


# --- time zones -------------------------------------------------------------------------

def test_require_utc_rejects_naive_and_non_utc() -> None:
    expect_field("when", lambda: require_utc(NAIVE, "when"))
    expect_field("when", lambda: require_utc(PLUS_ONE, "when"))
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Amsterdam"))
    expect_field("when", lambda: require_utc(summer, "when"))
    expect_field("when", lambda: require_utc("2026-11-20", "when"))  # type: ignore[arg-type]
    assert require_utc(T0, "when") == T0


# --- GridConstraint -----------------------------------------------------------------------

def constraint(**overrides: Any) -> GridConstraint:
    values: dict[str, Any] = {
        "node_id": "feeder", "start": T0, "end": T0 + hours(4), "source": "openadr",
        "source_ref": "evt-1/mod-0", "received_at": T0 - hours(3), "import_max_kw": 90.0}
    values.update(overrides)
    return GridConstraint(**values)


@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"node_id": ""}, "node_id"),
    ({"start": NAIVE}, "start"),
    ({"start": PLUS_ONE}, "start"),
    ({"end": NAIVE + hours(4)}, "end"),
    ({"end": T0}, "end"),
    ({"source": ""}, "source"),
    ({"source_ref": 7}, "source_ref"),
    ({"received_at": NAIVE}, "received_at"),
    ({"expires_at": NAIVE}, "expires_at"),
    ({"expires_at": PLUS_ONE}, "expires_at"),
    ({"import_max_kw": -1.0}, "import_max_kw"),
    ({"export_max_kw": float("inf")}, "export_max_kw"),
    ({"setpoint_kw": float("nan")}, "setpoint_kw"),
    ({"import_max_kw": None}, "import_max_kw"),  # no limit at all
    ({"priority": 1.5}, "priority"),
    ({"priority": True}, "priority"),
])
def test_constraint_validation_names_the_field(overrides: dict[str, Any],
                                               field_name: str) -> None:
    expect_field(field_name, lambda: constraint(**overrides))


def test_constraint_with_only_a_setpoint_or_export_cap_is_valid() -> None:
    assert constraint(import_max_kw=None, setpoint_kw=-5.0).setpoint_kw == -5.0
    assert constraint(import_max_kw=None, export_max_kw=0.0).export_max_kw == 0.0


def test_constraint_applies_in_its_half_open_window() -> None:
    c = constraint(start=T0, end=T0 + hours(4))
    assert not c.applies_at(T0 - timedelta(seconds=1))
    assert c.applies_at(T0)
    assert c.applies_at(T0 + hours(4) - timedelta(seconds=1))
    assert not c.applies_at(T0 + hours(4))


def test_constraint_does_not_apply_from_its_expiry() -> None:
    c = constraint(start=T0, end=T0 + hours(4), expires_at=T0 + hours(1))
    assert c.applies_at(T0 + hours(1) - timedelta(seconds=1))
    assert not c.applies_at(T0 + hours(1))
    assert not c.applies_at(T0 + hours(2))  # inside the window, but expired


def test_constraint_expiring_after_its_end_ends_at_its_end() -> None:
    c = constraint(start=T0, end=T0 + hours(1), expires_at=T0 + hours(5))
    assert c.applies_at(T0 + timedelta(minutes=30))
    assert not c.applies_at(T0 + hours(2))


def test_constraint_expired_before_start_never_applies() -> None:
    c = constraint(start=T0, end=T0 + hours(1), expires_at=T0 - hours(1))
    assert not any(c.applies_at(T0 + timedelta(minutes=m)) for m in range(0, 60, 5))


# --- PriceSignal and NodeLoad -------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"start": NAIVE}, "start"),
    ({"end": PLUS_ONE + hours(1)}, "end"),
    ({"end": T0}, "end"),
    ({"import_price_per_kwh": float("nan")}, "import_price_per_kwh"),
    ({"export_price_per_kwh": "0.1"}, "export_price_per_kwh"),
])
def test_price_signal_validation_names_the_field(overrides: dict[str, Any],
                                                 field_name: str) -> None:
    values: dict[str, Any] = {"start": T0, "end": T0 + hours(1), "import_price_per_kwh": 0.3,
                              "export_price_per_kwh": 0.1}
    values.update(overrides)
    expect_field(field_name, lambda: PriceSignal(**values))


def test_price_signal_allows_negative_prices() -> None:
    price = PriceSignal(T0, T0 + hours(1), -0.05, -0.1)
    assert (price.import_price_per_kwh, price.export_price_per_kwh) == (-0.05, -0.1)


@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"node_id": ""}, "node_id"),
    ({"start": PLUS_ONE}, "start"),
    ({"end": NAIVE + hours(1)}, "end"),
    ({"end": T0 - hours(1)}, "end"),
    ({"load_kw": float("inf")}, "load_kw"),
    ({"load_kw": None}, "load_kw"),
])
def test_node_load_validation_names_the_field(overrides: dict[str, Any],
                                              field_name: str) -> None:
    values: dict[str, Any] = {"node_id": "site-a", "start": T0, "end": T0 + hours(1),
                              "load_kw": 40.0}
    values.update(overrides)
    expect_field(field_name, lambda: NodeLoad(**values))


def test_node_load_may_be_negative_generation() -> None:
    assert NodeLoad("site-a", T0, T0 + hours(1), -12.5).load_kw == -12.5


# --- DemandCharge ------------------------------------------------------------------------

def demand_charge(**overrides: Any) -> DemandCharge:
    values: dict[str, Any] = {
        "node_id": "site-a", "start": T0, "end": T0 + hours(4), "price_per_kw": 8.5,
        "source": "openadr", "source_ref": "event dc-1 mod 0", "received_at": T0 - hours(1)}
    values.update(overrides)
    return DemandCharge(**values)


@pytest.mark.parametrize(("overrides", "field_name"), [
    ({"node_id": ""}, "node_id"),
    ({"start": NAIVE}, "start"),
    ({"end": NAIVE + hours(4)}, "end"),
    ({"end": T0}, "end"),
    ({"price_per_kw": -0.01}, "price_per_kw"),
    ({"price_per_kw": float("nan")}, "price_per_kw"),
    ({"price_per_kw": float("inf")}, "price_per_kw"),
    ({"price_per_kw": "8"}, "price_per_kw"),
    ({"price_per_kw": True}, "price_per_kw"),
    ({"source": " "}, "source"),
    ({"source_ref": None}, "source_ref"),
    ({"received_at": PLUS_ONE.replace(tzinfo=ZoneInfo("Europe/Amsterdam"))}, "received_at"),
])
def test_demand_charge_validation_names_the_field(overrides: dict[str, Any],
                                                  field_name: str) -> None:
    """A negative or non-finite price per kW, a bad window or provenance is refused."""
    expect_field(field_name, lambda: demand_charge(**overrides))


def test_demand_charge_is_frozen_utc_and_touches_half_open_windows() -> None:
    """A zero-offset time becomes UTC; the window is ``[start, end)``; a price of 0 is valid."""
    charge = demand_charge(start=T0.replace(tzinfo=timezone(timedelta(0))), price_per_kw=0)
    assert charge.start == T0 and charge.start.tzinfo is UTC and charge.price_per_kw == 0
    assert charge.touches(T0 + hours(3), T0 + hours(5))
    assert not charge.touches(T0 + hours(4), T0 + hours(5))
    assert not charge.touches(T0 - hours(1), T0)
    with pytest.raises(AttributeError):
        charge.price_per_kw = 1.0  # type: ignore[misc]


# --- GridNode and GridTree ------------------------------------------------------------------

@pytest.mark.parametrize(("args", "field_name"), [
    (("", NodeKind.SITE), "node_id"),
    (("site-a", "substation"), "kind"),
    (("site-a", NodeKind.SITE, ""), "parent_id"),
])
def test_grid_node_validation_names_the_field(args: tuple[Any, ...], field_name: str) -> None:
    expect_field(field_name, lambda: GridNode(*args))


def test_grid_node_kind_from_string() -> None:
    assert GridNode("f", "feeder").kind is NodeKind.FEEDER  # type: ignore[arg-type]


FEEDER = GridNode("feeder", NodeKind.FEEDER)
SITE_A = GridNode("site-a", NodeKind.SITE, parent_id="feeder")
SITE_B = GridNode("site-b", NodeKind.SITE, parent_id="feeder")


def test_grid_tree_rejects_duplicate_node_ids() -> None:
    err = expect_field("node_id", lambda: GridTree((FEEDER, SITE_A, SITE_A), ()))
    assert "site-a" in str(err)


def test_grid_tree_rejects_unknown_parent() -> None:
    orphan = GridNode("site-c", NodeKind.SITE, parent_id="feeder-9")
    err = expect_field("parent_id", lambda: GridTree((FEEDER, orphan), ()))
    assert "feeder-9" in str(err)


def test_grid_tree_rejects_cycles() -> None:
    a = GridNode("a", NodeKind.FEEDER, parent_id="b")
    b = GridNode("b", NodeKind.SITE, parent_id="a")
    expect_field("parent_id", lambda: GridTree((a, b), ()))
    loop = GridNode("self", NodeKind.SITE, parent_id="self")
    expect_field("parent_id", lambda: GridTree((FEEDER, loop), ()))
    # a cycle hanging below a valid root is found too
    c = GridNode("c", NodeKind.SITE, parent_id="d")
    d = GridNode("d", NodeKind.SITE, parent_id="e")
    e = GridNode("e", NodeKind.SITE, parent_id="c")
    expect_field("parent_id", lambda: GridTree((FEEDER, SITE_A, c, d, e), ()))


def test_grid_tree_rejects_evse_on_unknown_node() -> None:
    err = expect_field("node_id", lambda: GridTree((FEEDER, SITE_A),
                                                   (evse(node_id="site-z"),)))
    assert "site-z" in str(err)


def test_grid_tree_rejects_duplicate_evse_ids_and_ids_shared_with_nodes() -> None:
    expect_field("evse_id", lambda: GridTree((FEEDER, SITE_A), (evse(), evse())))
    expect_field("evse_id", lambda: GridTree((FEEDER, SITE_A), (evse(evse_id="feeder"),)))


def test_grid_tree_ancestors_and_lookup() -> None:
    area = GridNode("area", NodeKind.AREA)
    feeder = GridNode("feeder", NodeKind.FEEDER, parent_id="area")
    tree = GridTree((area, feeder, SITE_A), (evse(),))
    assert tree.ancestors("site-a") == ["site-a", "feeder", "area"]
    assert tree.ancestors("area") == ["area"]
    assert tree.evse("A-01").node_id == "site-a"
    assert tree.has_node("feeder") and not tree.has_node("A-01")
    with pytest.raises(KeyError):
        tree.evse("nope")


# --- sessions_by_evse -------------------------------------------------------------------

def test_sessions_by_evse_groups_and_sorts_by_arrival() -> None:
    late = session(session_id="late", arrival=T0 + hours(4), departure=T0 + hours(6))
    early = session(session_id="early", arrival=T0, departure=T0 + hours(4))  # back to back
    other = session(session_id="other", evse_id="A-02", arrival=T0, departure=T0 + hours(5))
    grouped = sessions_by_evse([late, other, early])
    assert {k: [s.session_id for s in v] for k, v in grouped.items()} == {
        "A-01": ["early", "late"], "A-02": ["other"]}


@pytest.mark.parametrize(("first", "second"), [
    ((0.0, 4.0), (3.0, 6.0)),  # partial overlap
    ((0.0, 8.0), (2.0, 3.0)),  # second inside the first
    ((1.0, 3.0), (1.0, 2.0)),  # same arrival
])
def test_sessions_by_evse_rejects_overlaps_on_one_evse(first: tuple[float, float],
                                                       second: tuple[float, float]) -> None:
    a = session(session_id="s-a", arrival=T0 + hours(first[0]), departure=T0 + hours(first[1]))
    b = session(session_id="s-b", arrival=T0 + hours(second[0]),
                departure=T0 + hours(second[1]))
    err = expect_field("arrival", lambda: sessions_by_evse([b, a]))
    assert "s-a" in str(err) and "s-b" in str(err) and "A-01" in str(err)


def test_sessions_by_evse_finds_overlap_past_a_short_session() -> None:
    long = session(session_id="long", arrival=T0, departure=T0 + hours(8))
    short = session(session_id="short", arrival=T0 + hours(1), departure=T0 + hours(2))
    third = session(session_id="third", arrival=T0 + hours(3), departure=T0 + hours(4))
    expect_field("arrival", lambda: sessions_by_evse([third, short, long]))


# --- Schedule -------------------------------------------------------------------------------

STEP = timedelta(minutes=15)


def frames(index: pd.Index, columns: list[str], values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(values, index=index, columns=columns)


def make_schedule(power_kw: pd.DataFrame, session_power_kw: pd.DataFrame | None = None,
                  soc: pd.DataFrame | None = None) -> Schedule:
    sessions = session_power_kw if session_power_kw is not None else power_kw.iloc[:, :0]
    return Schedule(power_kw=power_kw, session_power_kw=sessions,
                    soc=soc if soc is not None else sessions,
                    unmet_kwh=pd.Series(dtype=float), interval=STEP, objective=0.0,
                    status="optimal", solver_stats={})


UTC_INDEX = pd.date_range(T0, periods=4, freq=STEP)


@pytest.mark.parametrize("bad_index", [
    pd.date_range(NAIVE, periods=4, freq=STEP),  # naive
    pd.date_range(T0, periods=4, freq=STEP).tz_convert("Europe/Amsterdam"),
    pd.RangeIndex(4),
])
@pytest.mark.parametrize("frame_name", ["power_kw", "session_power_kw", "soc"])
def test_schedule_rejects_a_non_utc_index(bad_index: pd.Index, frame_name: str) -> None:
    good = frames(UTC_INDEX, ["A-01"], np.zeros((4, 1)))
    parts = {"power_kw": good, "session_power_kw": good, "soc": good}
    parts[frame_name] = frames(bad_index, ["A-01"], np.zeros((4, 1)))
    expect_field(frame_name, lambda: make_schedule(**parts))


def test_schedule_node_load_sums_the_evses_under_a_node() -> None:
    area = GridNode("area", NodeKind.AREA)
    feeder = GridNode("feeder", NodeKind.FEEDER, parent_id="area")
    empty_site = GridNode("site-c", NodeKind.SITE, parent_id="feeder")
    tree = GridTree((area, feeder, SITE_A, SITE_B, empty_site), (
        evse(evse_id="A-01"), evse(evse_id="A-02"), evse(evse_id="B-01", node_id="site-b")))
    power = frames(UTC_INDEX, ["A-01", "A-02", "B-01"], np.array([
        [1.0, 2.0, 4.0],
        [11.0, -10.0, 0.0],
        [0.0, 0.0, 7.5],
        [3.0, 3.0, 3.0]]))
    schedule = make_schedule(power)
    assert schedule.intervals.equals(UTC_INDEX)
    np.testing.assert_allclose(schedule.node_load_kw(tree, "site-a"), [3.0, 1.0, 0.0, 6.0])
    np.testing.assert_allclose(schedule.node_load_kw(tree, "site-b"), [4.0, 0.0, 7.5, 3.0])
    for upper in ("feeder", "area"):
        np.testing.assert_allclose(schedule.node_load_kw(tree, upper), [7.0, 1.0, 7.5, 9.0])
    empty = schedule.node_load_kw(tree, "site-c")
    np.testing.assert_allclose(empty, np.zeros(4))
    assert empty.index.equals(UTC_INDEX)


def test_evse_phases_and_v2g_flag_must_have_their_types() -> None:
    expect_field("phases", lambda: evse(phases=True))
    expect_field("phases", lambda: evse(phases=3.0))
    expect_field("v2g_capable", lambda: evse(v2g_capable="yes"))
    assert evse(phases=1).phases == 1


def test_grid_tree_keeps_area_feeder_site_order() -> None:
    upside_down = GridNode("feeder-2", NodeKind.FEEDER, parent_id="site-a")
    err = expect_field("kind", lambda: GridTree((FEEDER, SITE_A, upside_down), ()))
    assert "cannot hang below site 'site-a'" in err.message
    area = GridNode("area", NodeKind.AREA)
    feeder = GridNode("f", NodeKind.FEEDER, parent_id="area")
    site = GridNode("s", NodeKind.SITE, parent_id="f")
    assert len(GridTree((area, feeder, site), ()).nodes) == 3


def test_evses_hang_below_sites_only() -> None:
    err = expect_field("node_id", lambda: GridTree((FEEDER, SITE_A),
                                                   (evse(node_id="feeder"),)))
    assert "must hang below a site" in err.message
