"""Workarounds for the ``ocpp`` library: per-phase key names, validation on the loop."""

from __future__ import annotations

import asyncio

import ocpp.messages
import pytest
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, validate_payload

from adapters.ocpp import compat


def test_per_phase_keys_get_their_spec_names_at_any_depth() -> None:
    mangled = {"chargingSchedule": [{"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 16.0, "limitL2": 10.0, "dischargeLimitL3": -4.0,
         "setpointReactiveL2": 1.0, "numberPhasesL2": 3}]}], "evseL2": "kept"}
    fixed = compat.restore_per_phase_keys(mangled)
    period = fixed["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert set(period) == {"startPeriod", "limit", "limit_L2", "dischargeLimit_L3",
                           "setpointReactive_L2", "numberPhasesL2"}
    assert fixed["evseL2"] == "kept"  # only the spec's per-phase fields are renamed


def test_messages_are_still_validated_but_on_the_event_loop() -> None:
    compat.install()
    assert ocpp.messages.ASYNC_VALIDATION is False
    bad = Call(unique_id="1", action="SetChargingProfile",
               payload={"evseId": 1, "chargingProfile": {"id": "not a number"}})
    with pytest.raises(OCPPError):
        asyncio.run(validate_payload(bad, "2.0.1"))
