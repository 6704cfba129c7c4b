"""Workarounds for the ``ocpp`` library: per-phase key names, validation on the loop and
through compiled schemas with the library's verdicts, the memoized key conversion."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import ocpp.messages
import pandas as pd
import pytest
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, validate_payload

from adapters.ocpp import compat
from adapters.ocpp.profiles import ProfileRequest, set_charging_profile
from aggregator.model import Evse, OcppVersion


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


def test_memoized_key_conversion_gives_the_library_result() -> None:
    message = {"chargingProfile": {"chargingSchedule": [{"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 16.0, "numberPhases": 3}], "startSchedule": "t"}],
        "validFrom": "t"}, "evseId": 1, "ocppCSMSURL": "u", "evMaxV2XEnergyRequest": 2,
        "list": [{"stateOfCharge": 5}, 3]}
    # in fresh interpreters: the library's own conversion, and after install()
    library = ("import json, sys, ocpp.charge_point as c\n"
               "m = json.loads(sys.argv[1])\n"
               "print(json.dumps(c.camel_to_snake_case(m)))")
    expected = json.loads(subprocess.run([sys.executable, "-c", library, json.dumps(message)],
                                         check=True, capture_output=True, text=True).stdout)
    code = ("import json, sys, ocpp.charge_point as c\n"
            "from adapters.ocpp import compat\n"
            "compat.install(); compat.install()\n"
            "m = json.loads(sys.argv[1])\n"
            "print(json.dumps([c.camel_to_snake_case(m), c.camel_to_snake_case(m)]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(message)], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [expected, expected]


def _profile_call(version: str, **changes: object) -> Call:
    evse = Evse("E-1", "site", 11.0, ocpp_version=OcppVersion(version))
    start = datetime(2026, 11, 21, 12, tzinfo=UTC)
    power = pd.Series([7.4, 7.4, 9.2, 4.6],
                      index=pd.date_range(start, periods=4, freq="15min", tz="UTC"))
    payload = set_charging_profile(ProfileRequest(
        evse=evse, power_kw=power, interval=timedelta(minutes=15), profile_id=12,
        stack_level=1, purpose="TxDefaultProfile", rate_unit="W" if version == "2.1" else "A"))
    profile = payload.get("chargingProfile") or payload["csChargingProfiles"]
    schedule = profile["chargingSchedule"]
    schedule = schedule[0] if isinstance(schedule, list) else schedule
    for key, value in changes.items():
        if key == "limit":
            schedule["chargingSchedulePeriod"][0]["limit"] = value
        else:
            profile[key] = value
    return Call("1", "SetChargingProfile", payload)


def _verdict(call: Call, version: str) -> str:
    try:
        asyncio.run(validate_payload(call, version))
    except OCPPError as err:
        return type(err).__name__
    return "valid"


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_compiled_validation_gives_the_library_verdicts(version: str) -> None:
    compat.install()
    cases = [{}, {"stackLevel": "one"}, {"chargingProfileKind": "Sometimes"}, {"limit": 10.05}]
    found = [_verdict(_profile_call(version, **case), version) for case in cases]
    assert isinstance(ocpp.messages.get_validator(2, "SetChargingProfile", version),
                      compat.CompiledValidator)
    installed = ocpp.messages.get_validator
    with compat.library_validation():
        assert ocpp.messages.get_validator is not installed
        expected = [_verdict(_profile_call(version, **case), version) for case in cases]
    assert ocpp.messages.get_validator is installed
    assert found == expected
    assert expected[0] == "valid" and "valid" not in expected[1:3]
    # 1.6 alone asks limits in multiples of 0.1 (the library parses them as Decimal)
    assert (expected[3] == "valid") is (version != "1.6")
