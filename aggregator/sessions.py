"""Sessions from what EVs tell their stations (OCPP 2.x charging needs), with defaults.

AC cars rarely send their battery size or state of charge; the defaults fill what the EV
did not say, and every limit is capped by what the EVSE can do (discharge only where
the EVSE is V2G-capable on OCPP 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from adapters.ocpp.csms import EvNeeds
from aggregator.model import Evse, Session


@dataclass(frozen=True)
class SessionDefaults:
    """What to assume when an EV does not say (a fleet or site setting)."""

    battery_capacity_kwh: float = 60.0
    soc: float = 0.3
    dwell: timedelta = timedelta(hours=8)
    min_soc_v2g: float = 0.4
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95


def session_from_needs(session_id: str, evse: Evse, arrival: datetime, needs: EvNeeds,
                       defaults: SessionDefaults | None = None) -> Session:
    """A ``Session`` at ``evse`` from the EV's needs, the EVSE's limits and the defaults."""
    d = defaults or SessionDefaults()
    capacity = needs.capacity_kwh or d.battery_capacity_kwh
    soc = needs.soc if needs.soc is not None else d.soc
    room = capacity * (1.0 - soc)
    departure = needs.departure if needs.departure is not None and needs.departure > arrival \
        else arrival + d.dwell
    discharge = 0.0
    if evse.can_discharge and needs.max_discharge_kw:
        discharge = min(needs.max_discharge_kw, evse.max_export_kw)
    floor = d.min_soc_v2g
    if needs.min_energy_kwh is not None:
        floor = max(floor, min(1.0, needs.min_energy_kwh / capacity))
    wish: dict[str, float] = {}
    if needs.target_soc is not None:
        wish["target_soc"] = needs.target_soc
    else:
        wish["energy_requested_kwh"] = min(room, needs.energy_kwh if needs.energy_kwh
                                           is not None else room)
    return Session(
        session_id=session_id, evse_id=evse.evse_id, arrival=arrival, departure=departure,
        battery_capacity_kwh=capacity, soc_initial=soc,
        max_charge_kw=evse.max_import_kw if needs.max_charge_kw is None
        else min(needs.max_charge_kw, evse.max_import_kw),
        max_discharge_kw=discharge, min_soc_v2g=floor,
        charge_efficiency=d.charge_efficiency, discharge_efficiency=d.discharge_efficiency,
        **wish)
