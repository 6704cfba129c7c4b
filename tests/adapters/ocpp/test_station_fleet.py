"""The bench's lean stations: numbering shared with the CSMS."""

from __future__ import annotations

from adapters.ocpp.station_fleet import VERSIONS, member


def test_members_cycle_through_the_versions_with_their_own_passwords() -> None:
    found = [member(i, "x") for i in range(6)]
    assert [version for _, version, _ in found] == [*VERSIONS, *VERSIONS]
    assert found[0] == ("x-00001", "1.6", "pw-x-00001")
    assert len({station_id for station_id, _, _ in found}) == 6
