"""Sessions built from EV charging needs: what the EV says, capped by the EVSE, defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ocpp.exceptions import FormatViolationError

from adapters.ocpp.csms import ev_needs
from aggregator.model import Evse, OcppVersion
from aggregator.sessions import SessionDefaults, session_from_needs

T0 = datetime(2026, 11, 20, 16, tzinfo=UTC)
AC = Evse("A-01", "site-a", 11.0)
V2G = Evse("A-11", "site-a", 11.0, max_export_kw=10.0, v2g_capable=True,
           ocpp_version=OcppVersion.V21)


def test_ac_needs_use_defaults_for_what_the_car_does_not_say() -> None:
    needs = ev_needs({"ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                                 "ev_max_current": 16, "ev_max_voltage": 400},
                      "departure_time": "2026-11-20T23:00:00Z"}, T0)
    session = session_from_needs("s-1", AC, T0, needs)
    assert session.energy_requested_kwh == 20.0
    assert session.departure == datetime(2026, 11, 20, 23, tzinfo=UTC)
    assert (session.battery_capacity_kwh, session.soc_initial) == (60.0, 0.3)  # defaults
    assert session.max_charge_kw == 11.0 and session.max_discharge_kw == 0.0


def test_an_ac_cars_current_limit_caps_its_power() -> None:
    """evMaxCurrent is per phase: 10 A on the 3 x 230 V EVSE is 6.9 kW, planned as such
    (not at the EVSE's 11 kW, which the car would never draw)."""
    needs = ev_needs({"ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                                 "ev_max_current": 10, "ev_max_voltage": 400}},
                     T0)
    assert needs.max_current_a == 10.0
    session = session_from_needs("s-4", AC, T0, needs)
    assert session.max_charge_kw == pytest.approx(6.9)
    with pytest.raises(FormatViolationError, match="ev_max_current: bad value"):
        ev_needs({"ac_charging_parameters": {"ev_max_current": -1}}, T0)


def test_v2x_needs_on_a_v2g_evse() -> None:
    needs = ev_needs({"dc_charging_parameters": {"ev_energy_capacity": 77000,
                                                 "state_of_charge": 40, "ev_max_power": 50000},
                      "v2x_charging_parameters": {"max_charge_power": 22000,
                                                  "max_discharge_power": 15000,
                                                  "ev_min_v2x_energy_request": 7700,
                                                  "ev_max_energy_request": 38500,
                                                  "target_soc": 80}}, T0)
    assert (needs.capacity_kwh, needs.soc, needs.target_soc) == (77.0, 0.4, 0.8)
    # ISO 15118-20 energy requests are relative to the present SoC (30.8 of 77 kWh)
    assert (needs.min_v2x_energy_kwh, needs.max_energy_kwh) == (7.7, 38.5)
    session = session_from_needs("s-2", V2G, T0, needs, SessionDefaults(dwell=timedelta(hours=5)))
    assert session.target_soc == 0.8
    assert session.max_charge_kw == 11.0  # the EVSE's rating, not the car's 22 kW
    assert session.max_discharge_kw == 10.0  # likewise for discharge
    assert session.min_soc_v2g == pytest.approx(0.5)  # 30.8 + 7.7 = 38.5 of 77 kWh kept
    assert session.max_soc == pytest.approx(0.9)  # 30.8 + 38.5 = 69.3 of 77 kWh at most
    above = ev_needs({"dc_charging_parameters": {"ev_energy_capacity": 77000,
                                                 "state_of_charge": 60},
                      "v2x_charging_parameters": {"max_discharge_power": 15000,
                                                  "ev_min_v2x_energy_request": -15400,
                                                  "ev_max_v2x_energy_request": -1000,
                                                  "target_soc": 60}}, T0)
    assert (above.min_v2x_energy_kwh, above.max_energy_kwh) == (-15.4, -1.0)  # not refused
    held = session_from_needs("s-5", V2G, T0, above, SessionDefaults(min_soc_v2g=0.1))
    assert held.min_soc_v2g == pytest.approx(0.4)  # 46.2 - 15.4 = 30.8 of 77 kWh
    assert held.energy_ceiling_kwh == pytest.approx(46.2)  # never below what is there
    assert session.departure == T0 + timedelta(hours=5)
    plain = session_from_needs("s-3", AC, T0, needs)
    assert plain.max_discharge_kw == 0.0  # no V2G without a V2G EVSE on OCPP 2.1


def test_bad_needs_are_refused_by_field() -> None:
    with pytest.raises(FormatViolationError, match="state_of_charge: above 100"):
        ev_needs({"dc_charging_parameters": {"state_of_charge": 140}}, T0)
    with pytest.raises(FormatViolationError, match="max_discharge_power: bad value"):
        ev_needs({"v2x_charging_parameters": {"max_discharge_power": -5}}, T0)
    with pytest.raises(FormatViolationError, match="ev_max_energy_request: bad value"):
        ev_needs({"v2x_charging_parameters": {"ev_max_energy_request": "lots"}}, T0)
    with pytest.raises(FormatViolationError, match="departure_time"):
        ev_needs({"departure_time": "soon"}, T0)


def test_zero_is_an_answer_not_a_gap() -> None:
    needs = ev_needs({"ac_charging_parameters": {"energy_amount": 0, "ev_min_current": 6,
                                                 "ev_max_current": 16, "ev_max_voltage": 400},
                      "v2x_charging_parameters": {"max_charge_power": 0,
                                                  "ev_target_energy_request": 5000}}, T0)
    assert needs.energy_kwh == 0.0 and needs.max_charge_kw == 0.0
    session = session_from_needs("s-4", AC, T0, needs)
    assert session.energy_requested_kwh == 0.0 and session.max_charge_kw == 0.0


def test_import_and_export_power_at_one_moment_make_one_net_reading_in_any_order() -> None:
    from datetime import UTC, datetime

    from aggregator.model import Evse, Measurand, MeterSample
    from aggregator.sessions import SessionTracker

    at = datetime(2026, 11, 22, 19, 35, tzinfo=UTC)
    tracker = SessionTracker({("cs", 1): Evse("e1", "site", 11.0)})
    tracker.start("cs", 1, "tx", at)
    for order in ((Measurand.POWER_IMPORT, Measurand.POWER_EXPORT),
                  (Measurand.POWER_EXPORT, Measurand.POWER_IMPORT)):
        values = {Measurand.POWER_IMPORT: 0.0, Measurand.POWER_EXPORT: 6261.5}
        readings = tracker.observe([MeterSample("cs", 1, "tx", at, m, values[m], at)
                                    for m in order])
        assert [(r.evse_id, r.power_kw) for r in readings] == [("e1", -6.2615)]
    assert tracker.live["cs/1/tx"].power_kw == -6.2615


def test_a_measured_soc_replaces_the_default_arrival_soc_and_keeps_the_energy_wish() -> None:
    from datetime import UTC, datetime, timedelta

    from adapters.ocpp.csms import EvNeeds
    from aggregator.model import Evse, Measurand, MeterSample
    from aggregator.sessions import SessionDefaults, SessionTracker

    at = datetime(2026, 11, 22, 17, tzinfo=UTC)
    tracker = SessionTracker({("cs", 1): Evse("e1", "site", 11.0)}, SessionDefaults(soc=0.3))
    tracker.start("cs", 1, "tx", at)
    tracker.update_needs("cs", 1, EvNeeds(at, at + timedelta(hours=4), 11.1, {}))
    later = at + timedelta(minutes=30)
    tracker.observe([MeterSample("cs", 1, "tx", at, Measurand.ENERGY_IMPORT, 0.0, at),
                     MeterSample("cs", 1, "tx", later, Measurand.ENERGY_IMPORT, 5700.0, later),
                     MeterSample("cs", 1, "tx", later, Measurand.SOC, 54.0, later)])
    session = tracker.live["cs/1/tx"].session
    # 54 % now, 5.7 kWh metered (5.415 kWh into the battery of 60): it came with 44.975 %
    assert session.soc_initial == pytest.approx(0.54 - 5.7 * 0.95 / 60)
    assert session.energy_requested_kwh == pytest.approx(11.1)
    left = session.energy_target_kwh - 0.54 * 60
    assert left == pytest.approx(11.1 - 5.415)
