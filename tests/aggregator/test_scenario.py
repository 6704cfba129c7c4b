"""Scenario helpers."""

from __future__ import annotations

from datetime import timedelta

from aggregator.scenario import Scenario, shift_scenario


def test_shift_moves_every_time_and_nothing_else(shipped_scenario: Scenario) -> None:
    delta = timedelta(days=3, hours=1)
    moved = shift_scenario(shipped_scenario, delta)
    assert moved.start == shipped_scenario.start + delta
    assert moved.end == shipped_scenario.end + delta
    for old, new in zip(shipped_scenario.sessions, moved.sessions, strict=True):
        assert (new.arrival - old.arrival, new.departure - old.departure) == (delta, delta)
        assert new.energy_target_kwh == old.energy_target_kwh
    for old_c, new_c in zip(shipped_scenario.constraints, moved.constraints, strict=True):
        assert new_c.start - old_c.start == delta and new_c.received_at - old_c.received_at == delta
        assert new_c.import_max_kw == old_c.import_max_kw
    assert [p.start - q.start for p, q in zip(moved.prices, shipped_scenario.prices,
                                              strict=True)] == [delta] * len(moved.prices)
    assert all(n.start - o.start == delta
               for n, o in zip(moved.loads, shipped_scenario.loads, strict=True))
