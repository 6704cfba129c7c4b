"""Scenario helpers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from aggregator.model import DemandCharge, ModelError
from aggregator.scenario import Scenario, shift_scenario


def peak_charge(scenario: Scenario, node_id: str = "site-a") -> DemandCharge:
    """A 10-per-kW charge on the first four hours of ``scenario``."""
    return DemandCharge(node_id=node_id, start=scenario.start,
                        end=scenario.start + timedelta(hours=4), price_per_kw=10.0,
                        source="scenario", source_ref="demand_charges[0]",
                        received_at=scenario.start)


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


def test_shift_moves_demand_charges_too(shipped_scenario: Scenario) -> None:
    """A demand charge's window and receipt move with the scenario; its price does not."""
    site = next(n.node_id for n in shipped_scenario.tree.nodes if n.kind.value == "site")
    scenario = replace(shipped_scenario, demand_charges=(peak_charge(shipped_scenario, site),))
    delta = timedelta(days=2)
    [moved] = shift_scenario(scenario, delta).demand_charges
    [old] = scenario.demand_charges
    assert (moved.start - old.start, moved.end - old.end) == (delta, delta)
    assert moved.received_at - old.received_at == delta
    assert (moved.node_id, moved.price_per_kw) == (old.node_id, old.price_per_kw)


def test_a_demand_charge_must_name_a_grid_node(shipped_scenario: Scenario) -> None:
    """Unknown ids and EVSE ids are refused: the peak is a node's net import."""
    evse = shipped_scenario.tree.evses[0].evse_id
    for node_id in ("nowhere", evse):
        with pytest.raises(ModelError, match="demand charge from 'demand_charges\\[0\\]'") \
                as caught:
            replace(shipped_scenario, demand_charges=(peak_charge(shipped_scenario, node_id),))
        assert caught.value.field == "node_id" and node_id in str(caught.value)
