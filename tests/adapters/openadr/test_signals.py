"""OpenADR events to constraints, prices and demand charges: every signal, timing rule and
bad value."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.openadr.config import VenConfig
from adapters.openadr.signals import OPEN_ENDED, EventError, start_offset, translate

T0 = datetime(2026, 11, 21, 17, tzinfo=UTC)
M = timedelta(minutes=1)


def config(**overrides: Any) -> VenConfig:
    data: dict[str, Any] = {
        "vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ven_name": "gridflex",
        "state_file": "/tmp/unused.json", "default_nodes": ["site-a"],
        "targets": {"resource_id": {"feeder-7": ["feeder-7"], "both": ["site-a", "site-b"]},
                    "group_id": {"evening": ["site-b"]}},
        "node_max_import_kw": {"site-a": 200},
        "programs": {"oadr://dso/caps": {"mandatory": True, "priority": 2,
                                         "simple_levels_kw": {"1": 150, "2": 80, "3": 0}},
                     "*": {"base_import_price_per_kwh": 0.25, "export_price_ratio": 0.8}},
    }
    data.update(overrides)
    return VenConfig.from_mapping(data)


def event(name: str = "SIMPLE", kind: str = "level", payloads: tuple[float, ...] = (2.0,),
          **extra: Any) -> dict[str, Any]:
    intervals = [{"dtstart": T0 + n * 15 * M, "duration": 15 * M, "signal_payload": p, "uid": n}
                 for n, p in enumerate(payloads)]
    result: dict[str, Any] = {
        "event_descriptor": {"event_id": "ev-1", "modification_number": 3,
                             "market_context": "oadr://dso/caps", "event_status": "far",
                             "priority": 0, "test_event": False},
        "active_period": {"dtstart": T0, "duration": 15 * M * len(payloads)},
        "event_signals": [{"signal_name": name, "signal_type": kind, "signal_id": "sig-9",
                           "intervals": intervals}],
        "targets": [{"ven_id": "ven-1"}],
        "response_required": "always",
    }
    for key, value in extra.items():
        section, _, name_ = key.partition("__")
        if name_:
            result[section][name_] = value
        else:
            result[key] = value
    return result


def test_simple_levels_map_to_the_program_caps_with_provenance() -> None:
    plan = translate(event(payloads=(1, 2, 3, 0)), config(), received_at=T0)
    assert [(c.node_id, c.import_max_kw, c.start - T0) for c in plan.constraints] == [
        ("site-a", 150, 0 * M), ("site-a", 80, 15 * M), ("site-a", 0, 30 * M)]
    first = plan.constraints[0]
    assert first.source == "openadr" and first.end == T0 + 15 * M
    assert "event ev-1 mod 3 (oadr://dso/caps) signal SIMPLE/level sig-9 interval 0: 1" \
        in first.source_ref
    assert plan.scope == "event:ev-1" and plan.nodes == ("site-a",)
    assert first.priority == 2 * 1000  # program priority; OpenADR priority 0 = none


def test_simple_level_without_a_configured_cap_is_an_error() -> None:
    with pytest.raises(EventError, match=r"intervals\[0\].signal_payload.*level 2"):
        translate(event(market_context="x", payloads=(2,)) | {"event_descriptor": {
            "event_id": "e", "market_context": "oadr://other"}}, config(), received_at=T0)


def test_load_dispatch_setpoint_honours_unit_and_scale() -> None:
    raw = event("LOAD_DISPATCH", "setpoint", (50_000.0,))
    raw["event_signals"][0]["measurement"] = {"name": "powerReal", "unit": "W", "scale": "none"}
    [limit] = translate(raw, config(), received_at=T0).constraints
    assert limit.setpoint_kw == 50 and limit.import_max_kw == 50
    raw["event_signals"][0]["measurement"] = {"name": "powerReal", "unit": "W", "scale": "k"}
    raw["event_signals"][0]["intervals"][0]["signal_payload"] = 40.0
    [limit] = translate(raw, config(), received_at=T0).constraints
    assert limit.setpoint_kw == 40
    raw["event_signals"][0]["measurement"] = {"name": "powerReal", "unit": "W", "scale": "M"}
    raw["event_signals"][0]["intervals"][0]["signal_payload"] = 0.5
    [limit] = translate(raw, config(), received_at=T0).constraints
    assert limit.setpoint_kw == 500
    raw["event_signals"][0]["measurement"] = {"name": "x", "unit": "A"}
    with pytest.raises(EventError, match=r"measurement\.unit"):
        translate(raw, config(), received_at=T0)


def test_dispatch_delta_and_multiplier_use_the_baseline() -> None:
    seen: list[tuple[str, datetime, datetime]] = []

    def baseline(node: str, start: datetime, end: datetime) -> float:
        seen.append((node, start, end))
        return 120.0

    [delta] = translate(event("LOAD_DISPATCH", "delta", (-30,)), config(), received_at=T0,
                        baseline_kw=baseline).constraints
    assert delta.import_max_kw == 90 and seen == [("site-a", T0, T0 + 15 * M)]
    [mult] = translate(event("LOAD_DISPATCH", "multiplier", (0.5,)), config(), received_at=T0,
                       baseline_kw=baseline).constraints
    assert mult.import_max_kw == 60
    with pytest.raises(EventError, match="needs a baseline"):
        translate(event("LOAD_DISPATCH", "delta", (-30,)), config(), received_at=T0)


def test_load_control_capacity_offsets_and_setpoint() -> None:
    [cap] = translate(event("LOAD_CONTROL", "x-loadControlCapacity", (0.25,)), config(),
                      received_at=T0).constraints
    assert cap.import_max_kw == 50
    with pytest.raises(EventError, match=r"0\.\.1"):
        translate(event("LOAD_CONTROL", "x-loadControlCapacity", (1.5,)), config(),
                  received_at=T0)
    [level] = translate(event("LOAD_CONTROL", "x-loadControlLevelOffset", (3,)), config(),
                        received_at=T0).constraints
    assert level.import_max_kw == 0
    [pct] = translate(event("LOAD_CONTROL", "x-loadControlPercentOffset", (-25,)), config(),
                      received_at=T0, baseline_kw=lambda *_: 100.0).constraints
    assert pct.import_max_kw == 75
    [setpoint] = translate(event("LOAD_CONTROL", "x-loadControlSetpoint", (12,)), config(),
                           received_at=T0).constraints
    assert setpoint.setpoint_kw == 12


def test_prices_absolute_relative_and_multiplier() -> None:
    base = {"event_descriptor": {"event_id": "p", "market_context": "oadr://market"}}
    for kind, payload, expected in (("price", 0.4, 0.4), ("priceRelative", 0.1, 0.35),
                                    ("priceMultiplier", 2.0, 0.5)):
        plan = translate(event("ELECTRICITY_PRICE", kind, (payload,)) | base, config(),
                         received_at=T0)
        [price] = plan.prices
        assert price.import_price_per_kwh == pytest.approx(expected)
        assert price.export_price_per_kwh == pytest.approx(expected * 0.8)
        assert plan.constraints == ()


def test_unsupported_signals_are_named_not_guessed() -> None:
    plan = translate(event("BID_PRICE", "price", (9.0,)), config(), received_at=T0)
    assert plan.unsupported == ("BID_PRICE/price",) and plan.constraints == ()
    assert plan.prices == () and plan.demand_charges == ()
    with pytest.raises(EventError, match=r"event_signals\[0\].signal_type"):
        translate(event("SIMPLE", "setpoint", (1,)), config(), received_at=T0)


def test_demand_charge_is_a_charge_per_kw_on_every_target_node_with_provenance() -> None:
    """Each interval's payload (currency per kW) becomes one ``DemandCharge`` per target
    node over the interval's window, referenced like the limits; nothing is unsupported."""
    raw = event("DEMAND_CHARGE", "price", (12.0, 0.0), targets=[{"resource_id": "both"}])
    plan = translate(raw, config(), received_at=T0)
    assert [(c.node_id, c.price_per_kw, c.start - T0, c.end - T0)
            for c in plan.demand_charges] == [
        ("site-a", 12.0, 0 * M, 15 * M), ("site-b", 12.0, 0 * M, 15 * M),
        ("site-a", 0.0, 15 * M, 30 * M), ("site-b", 0.0, 15 * M, 30 * M)]
    first = plan.demand_charges[0]
    assert first.source == "openadr" and first.received_at == T0
    assert "event ev-1 mod 3 (oadr://dso/caps) signal DEMAND_CHARGE/price sig-9 interval 0: 12" \
        in first.source_ref
    assert "interval 1: 0" in plan.demand_charges[2].source_ref
    assert plan.constraints == () and plan.prices == () and plan.unsupported == ()
    assert plan.scope == "event:ev-1"


def test_demand_charge_relative_and_multiplier_use_the_program_base() -> None:
    """priceRelative adds to and priceMultiplier scales ``base_demand_charge_per_kw``; a
    currency measurement (currencyPerKW) is not a power unit and scales nothing."""
    cfg = config(programs={"oadr://dso/caps": {"base_demand_charge_per_kw": 10.0}})
    for kind, payload, expected in (("price", 4.0, 4.0), ("priceRelative", -2.5, 7.5),
                                    ("priceMultiplier", 1.5, 15.0)):
        raw = event("DEMAND_CHARGE", kind, (payload,))
        raw["event_signals"][0]["measurement"] = {"name": "currencyPerKW", "unit": "EUR",
                                                  "scale": "k"}
        [charge] = translate(raw, cfg, received_at=T0).demand_charges
        assert charge.price_per_kw == pytest.approx(expected)
    assert config().program("oadr://dso/caps").base_demand_charge_per_kw == 0.0


@pytest.mark.parametrize(("kind", "payload", "field", "reason"), [
    ("price", -1.0, "signal_payload", "a demand charge must be >= 0 per kW, got -1"),
    ("priceRelative", -10.5, "signal_payload", "must be >= 0 per kW, got -0.5 (10 -10.5)"),
    ("priceMultiplier", -2.0, "signal_payload", "a multiplier must be >= 0"),
    ("price", float("nan"), "signal_payload", "must be finite"),
    ("price", float("-inf"), "signal_payload", "must be finite"),
    ("price", "12", "signal_payload", "must be a number"),
    ("price", True, "signal_payload", "must be a number"),
    ("level", 3.0, "signal_type", "a demand charge of type 'level' is not understood"),
])
def test_hostile_demand_charge_payloads_are_refused_naming_the_field(
        kind: str, payload: Any, field: str, reason: str) -> None:
    """A negative charge would pay the planner for a higher peak, a non-number is no
    price: the event is refused with the field, never half-applied."""
    cfg = config(programs={"oadr://dso/caps": {"base_demand_charge_per_kw": 10.0}})
    raw = event("DEMAND_CHARGE", kind, (1.0,))
    raw["event_signals"][0]["intervals"][0]["signal_payload"] = payload
    with pytest.raises(EventError) as caught:
        translate(raw, cfg, received_at=T0)
    where = "intervals[0].signal_payload" if field == "signal_payload" else "signal_type"
    assert caught.value.field == f"event_signals[0].{where}"
    assert reason in caught.value.message


def test_a_test_event_carries_no_demand_charge() -> None:
    """A drill is logged, never priced: no demand charge reaches the planner."""
    plan = translate(event("DEMAND_CHARGE", "price", (30.0,), event_descriptor__test_event=True),
                     config(), received_at=T0)
    assert plan.test_event and plan.demand_charges == ()


def test_price_signals_accept_currency_measurements_but_not_junk() -> None:
    """Prices are currency per kWh: a currencyPerKWh measurement is read as it is, a
    measurement that is not a mapping is refused at its field."""
    raw = event("ELECTRICITY_PRICE", "price", (0.3,))
    raw["event_signals"][0]["measurement"] = {"name": "currencyPerKWh", "unit": "EUR"}
    [price] = translate(raw, config(), received_at=T0).prices
    assert price.import_price_per_kwh == pytest.approx(0.3)
    raw["event_signals"][0]["measurement"] = "EUR"
    with pytest.raises(EventError, match=r"event_signals\[0\]\.measurement"):
        translate(raw, config(), received_at=T0)


def test_ramp_up_recovery_and_start_randomisation_shift_the_windows() -> None:
    raw = event(payloads=(1, 2))
    raw["active_period"].update(ramp_up=5 * M, recovery=10 * M,
                                tolerance={"tolerate": {"startafter": 20 * M}})
    plan = translate(raw, config(randomization_seed=7), received_at=T0)
    offset = start_offset(7, "ev-1", 20 * M)
    assert timedelta(0) <= offset < 20 * M and plan.start_offset == offset
    first, second = plan.constraints
    assert first.start == T0 + offset - 5 * M and first.end == T0 + offset + 15 * M
    assert second.start == T0 + offset + 15 * M and second.end == T0 + offset + 40 * M
    assert "ramp-up" in first.source_ref and "recovery" in second.source_ref
    assert plan.start == first.start and plan.end == second.end
    # deterministic per seed and event, different across VENs (seeds)
    assert start_offset(7, "ev-1", 20 * M) == offset
    assert len({start_offset(seed, "ev-1", 20 * M) for seed in range(20)}) > 5


def test_open_ended_last_interval_holds_until_cancelled() -> None:
    raw = event(payloads=(3,))
    raw["event_signals"][0]["intervals"][0]["duration"] = timedelta(0)
    raw["active_period"]["duration"] = timedelta(0)
    [limit] = translate(raw, config(), received_at=T0).constraints
    assert limit.end == T0 + OPEN_ENDED


def test_targets_map_to_nodes_and_signal_targets_override() -> None:
    raw = event(targets=[{"resource_id": "both"}, {"group_id": "evening"}])
    plan = translate(raw, config(), received_at=T0)
    assert plan.nodes == ("site-a", "site-b")
    raw["event_signals"][0]["targets"] = [{"resource_id": "feeder-7"}]
    plan = translate(raw, config(), received_at=T0)
    assert [c.node_id for c in plan.constraints] == ["feeder-7"]
    unknown = translate(event(targets=[{"resource_id": "nowhere"}]), config(), received_at=T0)
    assert unknown.nodes == () and unknown.constraints == ()


def test_test_events_carry_no_limits() -> None:
    plan = translate(event(event_descriptor__test_event="true"), config(), received_at=T0)
    assert plan.test_event and plan.constraints == () and "test event" in plan.notes[0]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda e: e.pop("event_descriptor"), "event_descriptor"),
    (lambda e: e["event_descriptor"].update(modification_number=-1), "modification_number"),
    (lambda e: e["active_period"].update(dtstart=datetime(2026, 1, 1)), "active_period.dtstart"),
    (lambda e: e["active_period"].update(duration=-M), "active_period.duration"),
    (lambda e: e["event_signals"][0]["intervals"][0].update(signal_payload=float("nan")),
     r"intervals\[0\].signal_payload"),
    (lambda e: e["event_signals"][0]["intervals"][0].update(signal_payload="2"),
     r"intervals\[0\].signal_payload"),
    (lambda e: e["event_signals"][0]["intervals"][0].update(duration=None),
     r"intervals\[0\].duration"),
    (lambda e: e.update(event_signals=[]), "event_signals"),
    (lambda e: e["event_signals"][0].update(measurement={"unit": "W", "scale": "q"}),
     "measurement.scale"),
    (lambda e: e.update(targets="ven-1"), "targets"),
])
def test_bad_events_name_the_field(mutate: Any, field: str) -> None:
    raw = event("LOAD_DISPATCH", "setpoint", (10,))
    mutate(raw)
    with pytest.raises(EventError, match=field):
        translate(raw, config(), received_at=T0)


_values = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3),
                    st.just(-M), st.just(T0), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from([
    ("event_descriptor", "event_id"), ("event_descriptor", "modification_number"),
    ("event_descriptor", "priority"), ("event_descriptor", "test_event"),
    ("active_period", "dtstart"), ("active_period", "duration"), ("active_period", "ramp_up"),
    ("active_period", "tolerance"), ("targets",), ("event_signals",),
    ("event_signals", 0, "signal_type"), ("event_signals", 0, "measurement"),
    ("event_signals", 0, "intervals"), ("event_signals", 0, "intervals", 0, "signal_payload"),
    ("event_signals", 0, "intervals", 0, "dtstart"),
    ("event_signals", 0, "intervals", 0, "duration")]), value=_values,
    name=st.sampled_from(["SIMPLE", "LOAD_DISPATCH", "LOAD_CONTROL", "ELECTRICITY_PRICE",
                          "DEMAND_CHARGE"]))
def test_fuzzed_events_give_a_plan_or_a_named_error(path: tuple[Any, ...], value: Any,
                                                    name: str) -> None:
    kinds = {"SIMPLE": "level", "LOAD_DISPATCH": "setpoint", "LOAD_CONTROL":
             "x-loadControlCapacity", "ELECTRICITY_PRICE": "price", "DEMAND_CHARGE": "price"}
    raw = copy.deepcopy(event(name, kinds[name], (1,)))
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        plan = translate(raw, config(), received_at=T0)
    except EventError as err:
        assert err.field and str(err).startswith(err.field)
    else:
        for limit in plan.constraints:
            assert limit.start < limit.end
            assert limit.import_max_kw is None or limit.import_max_kw >= 0
        for charge in plan.demand_charges:
            assert charge.start < charge.end and charge.price_per_kw >= 0


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"vtn_url": "http://127.0.0.1:1/x", "ven_name": "v",
            "state_file": str(tmp_path / "s.json")}
    for bad, field in (({"vtn_url": "ftp://x"}, "openadr.vtn_url"),
                       ({"ven_name": ""}, "openadr.ven_name"),
                       ({"cert": "a.pem"}, "openadr.cert"),
                       ({"require_signed": True}, "openadr.vtn_fingerprint"),
                       ({"poll_interval_s": 0.1}, "openadr.poll_interval_s"),
                       ({"opt_policy": "never"}, "openadr.opt_policy"),
                       ({"targets": {"meter": {}}}, "openadr.targets.meter"),
                       ({"programs": {"p": {"simple_levels_kw": {"7": 1}}}},
                        "openadr.programs.p.simple_levels_kw.7"),
                       ({"programs": {"p": {"mandatory": "yes"}}}, "openadr.programs.p.mandatory"),
                       ({"programs": {"p": {"base_demand_charge_per_kw": -1}}},
                        "openadr.programs.p.base_demand_charge_per_kw"),
                       ({"colour": 1}, "openadr.colour")):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            VenConfig.from_mapping(base | bad)
    assert VenConfig.from_mapping(base).program("oadr://any").mandatory is False
