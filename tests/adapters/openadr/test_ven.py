"""The VEN against a real openleadr VTN on 127.0.0.1: registration, events, opt, reports."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.openadr.config import VenConfig
from adapters.openadr.ven import NodeTelemetry, Ven
from adapters.openadr.vtn import Interval, LoopbackVtn
from aggregator.audit import cap_violations, node_base_load_kw
from aggregator.constraints import ChangeKind, ConstraintBook, SafeDefault
from aggregator.dr_events import journal, record_event
from aggregator.ledger import Ledger
from aggregator.model import Evse, GridNode, GridTree, NodeKind, Session
from aggregator.opt_policy import FeasibilityPolicy, OptDecision
from aggregator.planning import build_problem, explain_binding, to_schedule
from aggregator.scenario import Scenario, shift_scenario
from aggregator.scenario_file import load_scenario
from optimizer import solve
from tests.aggregator.conftest import SHIPPED_SCENARIO
from tests.peers.net import free_port

M = timedelta(minutes=1)



def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Rig:
    vtn: LoopbackVtn
    ven: Ven
    book: ConstraintBook
    tmp_path: Path

    @property
    def ven_id(self) -> str:
        ven_id = self.ven.ven_id
        assert ven_id is not None
        return ven_id


def ven_config(vtn: LoopbackVtn, tmp_path: Path, **extra: Any) -> VenConfig:
    data: dict[str, Any] = {
        "vtn_url": vtn.url, "ven_name": "gridflex-test",
        "state_file": str(tmp_path / "ven.json"),
        "default_nodes": ["site-a"], "targets": {"resource_id": {"site-b": ["site-b"]}},
        "programs": {"oadr://dso/caps": {"mandatory": True,
                                         "simple_levels_kw": {"1": 150, "2": 80, "3": 0}},
                     "oadr://dso/voluntary": {"simple_levels_kw": {"1": 100, "2": 50}}},
    }
    data.update(extra)
    return VenConfig.from_mapping(data)


def with_rig(body: Callable[[Rig], Awaitable[None]]) -> Callable[[Path], None]:
    """A sync test that runs ``body`` with a fresh VTN, constraint book and VEN."""

    def test(tmp_path: Path) -> None:
        async def main() -> None:
            vtn = LoopbackVtn(port=free_port())
            await vtn.start()
            book = ConstraintBook(started_at=now())
            ven = Ven(ven_config(vtn, tmp_path), book)
            try:
                await body(Rig(vtn, ven, book, tmp_path))
            finally:
                await ven.stop()
                await vtn.stop()
        asyncio.run(main())

    test.__name__ = test.__qualname__ = body.__name__
    test.__doc__ = body.__doc__
    return test


def in_loop(body: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """A sync test that runs ``body(tmp_path)`` in a fresh event loop."""

    def test(tmp_path: Path) -> None:
        asyncio.run(body(tmp_path))

    test.__name__ = test.__qualname__ = body.__name__
    return test


@with_rig
async def test_registers_persists_ids_and_reuses_them(rig: Rig) -> None:
    assert await rig.ven.register()
    state = json.loads((rig.tmp_path / "ven.json").read_text())
    assert state["ven_id"] == rig.ven_id == "ven-1"
    assert state["registration_id"] == rig.vtn.vens["ven-1"].registration_id
    assert rig.book.link_is_up("openadr")
    # a restarted VEN presents the saved ven_id and gets the same registration back
    again = Ven(rig.ven.config, rig.book)
    assert again.ven_id == "ven-1"
    assert await again.register() and again.registration_id == state["registration_id"]
    assert len(rig.vtn.vens) == 1
    await again.stop()


@in_loop
async def test_a_corrupt_state_file_registers_afresh_and_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "ven.json").write_text('{"vtn_url": "truncated')
    vtn = LoopbackVtn(port=free_port())
    await vtn.start()
    ven = Ven(ven_config(vtn, tmp_path), ConstraintBook(started_at=now()))
    try:
        assert ven.ven_id is None  # nothing usable was loaded
        assert await ven.register()
        state = json.loads((tmp_path / "ven.json").read_text())
        assert state["ven_id"] == ven.ven_id and state["vtn_url"] == vtn.url
        assert [p.name for p in tmp_path.iterdir()] == ["ven.json"]  # no temporary left
    finally:
        await ven.stop()
        await vtn.stop()


@with_rig
async def test_event_becomes_constraints_and_the_vtn_gets_opt_in(rig: Rig) -> None:
    await rig.ven.register()
    start = now() + 10 * M
    rig.vtn.add_event(rig.ven_id, "evening-1", "SIMPLE", "level",
                      [Interval(start, 15 * M, 1), Interval(start + 15 * M, 15 * M, 2)],
                      market_context="oadr://dso/caps")
    await rig.ven.poll_once()
    assert rig.vtn.opt_replies == [(rig.ven_id, "evening-1", "optIn")]
    assert rig.book.limit_kw("site-a", "import", start + M) == 150
    assert rig.book.limit_kw("site-a", "import", start + 16 * M) == 80
    [why] = [r for r in rig.book.why("site-a", start + 16 * M) if r.binding]
    assert "event evening-1 mod 0 (oadr://dso/caps) signal SIMPLE/level" in why.describe()
    # polling again without news changes nothing and sends no second reply
    await rig.ven.poll_once()
    assert len(rig.vtn.opt_replies) == 1


@with_rig
async def test_modification_replaces_and_cancellation_withdraws(rig: Rig) -> None:
    await rig.ven.register()
    start = now() + 10 * M
    rig.vtn.add_event(rig.ven_id, "e2", "SIMPLE", "level", [Interval(start, 30 * M, 1)],
                      market_context="oadr://dso/caps")
    await rig.ven.poll_once()
    rig.vtn.modify_event(rig.ven_id, "e2", [Interval(start, 30 * M, 3)])
    await rig.ven.poll_once()
    assert rig.book.limit_kw("site-a", "import", start + M) == 0
    record = rig.ven.events["e2"]
    assert record.plan.modification_number == 1 and len(record.history) == 2
    rig.vtn.cancel_event(rig.ven_id, "e2")
    await rig.ven.poll_once()
    assert rig.book.limit_kw("site-a", "import", start + M) is None
    assert rig.book.journal[-1].kind == ChangeKind.WITHDRAWN
    assert rig.book.journal[-1].reason == "cancelled by the VTN"


@with_rig
async def test_an_event_missing_from_the_distribution_is_cancelled(rig: Rig) -> None:
    await rig.ven.register()
    start = now() + 10 * M
    for event_id in ("keep", "drop"):
        rig.vtn.add_event(rig.ven_id, event_id, "SIMPLE", "level", [Interval(start, 30 * M, 1)],
                          market_context="oadr://dso/caps",
                          targets=[{"resource_id": "site-b"}] if event_id == "drop" else None)
    await rig.ven.poll_once()
    assert rig.book.limit_kw("site-b", "import", start) == 150
    rig.vtn.remove_event(rig.ven_id, "drop")
    await rig.ven.poll_once()
    assert rig.book.limit_kw("site-b", "import", start) is None
    assert rig.book.limit_kw("site-a", "import", start) == 150
    assert "implied cancellation" in rig.book.journal[-1].reason
    # even the last event vanishing (an empty distribution) is seen
    rig.vtn.remove_event(rig.ven_id, "keep")
    await rig.ven.poll_once()
    assert rig.book.limit_kw("site-a", "import", start) is None


@with_rig
async def test_ramp_up_recovery_and_startafter_survive_the_real_vtn(rig: Rig) -> None:
    """Regression: openleadr's add_raw_event drops them (upstream issue 187)."""
    await rig.ven.register()
    start = now() + 30 * M
    rig.vtn.add_event(rig.ven_id, "ramped", "SIMPLE", "level", [Interval(start, 20 * M, 2)],
                      market_context="oadr://dso/caps", ramp_up=5 * M, recovery=10 * M,
                      startafter=4 * M)
    await rig.ven.poll_once()
    [limit] = [c for c in rig.book.published() if c.source_ref.startswith("event ramped")]
    offset = rig.ven.events["ramped"].plan.start_offset
    assert timedelta(0) <= offset < 4 * M
    assert limit.start == start + offset - 5 * M
    assert limit.end == start + offset + 30 * M


@with_rig
async def test_test_events_are_logged_without_action(rig: Rig) -> None:
    await rig.ven.register()
    rig.vtn.add_event(rig.ven_id, "drill", "SIMPLE", "level", [Interval(now() + M, 10 * M, 3)],
                      market_context="oadr://dso/caps", test_event=True)
    await rig.ven.poll_once()
    assert rig.book.published() == []
    assert rig.ven.events["drill"].decision.reason.startswith("test event")
    assert rig.vtn.opt_replies == [(rig.ven_id, "drill", "optIn")]


@with_rig
async def test_opt_out_keeps_mandatory_limits_and_drops_voluntary_ones(rig: Rig) -> None:
    async def refuse(plan: Any) -> OptDecision:
        return OptDecision(False, "fleet cannot meet it")

    rig.ven.opt_policy = refuse
    await rig.ven.register()
    start = now() + 5 * M
    rig.vtn.add_event(rig.ven_id, "must", "SIMPLE", "level", [Interval(start, 10 * M, 2)],
                      market_context="oadr://dso/caps")
    rig.vtn.add_event(rig.ven_id, "may", "SIMPLE", "level", [Interval(start, 10 * M, 2)],
                      market_context="oadr://dso/voluntary", targets=[{"resource_id": "site-b"}])
    await rig.ven.poll_once()
    assert sorted(rig.vtn.opt_replies) == [(rig.ven_id, "may", "optOut"),
                                           (rig.ven_id, "must", "optOut")]
    assert rig.book.limit_kw("site-a", "import", start) == 80  # a DSO limit is never ignored
    assert rig.book.limit_kw("site-b", "import", start) is None
    assert [d.reason for _, _, _, d in rig.ven.decisions] == ["fleet cannot meet it"] * 2


@with_rig
async def test_unreadable_event_is_opted_out_with_the_field(rig: Rig) -> None:
    await rig.ven.register()
    rig.vtn.add_event(rig.ven_id, "odd", "SIMPLE", "level", [Interval(now() + M, 10 * M, 2)],
                      market_context="oadr://unknown")
    await rig.ven.poll_once()
    assert rig.vtn.opt_replies == [(rig.ven_id, "odd", "optOut")]
    [(_, event_id, _, decision)] = rig.ven.decisions
    assert event_id == "odd" and "signal_payload" in decision.reason
    assert rig.book.published() == []


@with_rig
async def test_event_end_timer_withdraws_the_limits(rig: Rig) -> None:
    await rig.ven.register()
    start = now() - 10 * M
    rig.vtn.add_event(rig.ven_id, "short", "SIMPLE", "level",
                      [Interval(start, 10 * M + timedelta(seconds=2), 1)],
                      market_context="oadr://dso/caps")
    ended = asyncio.Event()
    rig.book.subscribe(lambda change: ended.set() if change.reason == "event ended" else None)
    await rig.ven.poll_once()
    await asyncio.wait_for(ended.wait(), timeout=10)
    assert rig.book.published() == []


@with_rig
async def test_reregisters_after_the_vtn_cancels_or_forgets(rig: Rig) -> None:
    await rig.ven.register()
    first = rig.ven.registration_id
    rig.vtn.cancel_registration(rig.ven_id)
    await rig.ven.poll_once()  # receives the cancellation
    assert rig.ven.registration_id is None
    await rig.ven.poll_once()  # registers again
    assert rig.ven.registration_id not in (None, first)
    second = rig.ven.registration_id
    rig.vtn.forget(rig.ven_id)
    await rig.ven.poll_once()  # oadrRequestReregistration -> openleadr re-registers
    assert rig.ven.registration_id not in (None, second)
    saved = json.loads((rig.tmp_path / "ven.json").read_text())
    assert saved["registration_id"] == rig.ven.registration_id
    # and events still flow afterwards
    rig.vtn.add_event(rig.ven_id, "after", "SIMPLE", "level", [Interval(now() + M, 10 * M, 1)],
                      market_context="oadr://dso/caps")
    await rig.ven.poll_once()
    assert rig.vtn.opt_replies[-1] == (rig.ven_id, "after", "optIn")


@in_loop
async def test_lost_vtn_falls_back_to_the_safe_default(tmp_path: Path) -> None:
    port = free_port()
    vtn = LoopbackVtn(port=port)
    await vtn.start()
    t0 = now()
    book = ConstraintBook(started_at=t0, defaults=[SafeDefault("openadr", "site-a",
                                                               import_max_kw=40)])
    ven = Ven(ven_config(vtn, tmp_path), book)
    try:
        assert await ven.register()
        start = now() + M
        vtn.add_event(ven.ven_id or "", "cap", "SIMPLE", "level", [Interval(start, 10 * M, 2)],
                      market_context="oadr://dso/caps")
        await ven.poll_once()
        await vtn.stop()
        await ven.poll_once()  # connection refused
        assert not book.link_is_up("openadr")
        assert book.limit_kw("site-a", "import", start + M) == 80  # last limit still valid
        assert book.limit_kw("site-a", "import", start + 11 * M) == 40  # then the default
    finally:
        await ven.stop()


@in_loop
async def test_reports_are_registered_and_delivered(tmp_path: Path) -> None:
    vtn = LoopbackVtn(port=free_port())
    await vtn.start()
    book = ConstraintBook(started_at=now())
    readings = {"site-a": NodeTelemetry(power_w=42_000.0, energy_wh=1_500.0)}
    ven = Ven(ven_config(vtn, tmp_path, report_resources=["site-a"]), book,
              telemetry=readings.__getitem__, report_interval=timedelta(seconds=1))
    try:
        assert await ven.register()
        measured = {m for _, _, m in vtn.registered_reports}
        assert {"RealPower", "RealEnergy", "Status"} <= measured, measured
        ven.start()
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            values = {(m, v) for _, _, m, _, v in vtn.reports}
            if {("RealPower", 42_000.0), ("RealEnergy", 1_500.0)} <= values:
                break
            await asyncio.sleep(0.2)
        assert ("RealPower", 42_000.0) in {(m, v) for _, _, m, _, v in vtn.reports}
        assert ("RealEnergy", 1_500.0) in {(m, v) for _, _, m, _, v in vtn.reports}
    finally:
        await ven.stop()
        await vtn.stop()


@with_rig
async def test_a_modification_racing_the_opt_reply_is_recovered(rig: Rig) -> None:
    """Regression: the VTN answers 452 to a reply for the old modification number."""
    await rig.ven.register()
    start = now() + 10 * M
    rig.vtn.add_event(rig.ven_id, "race", "SIMPLE", "level", [Interval(start, 30 * M, 1)],
                      market_context="oadr://dso/caps")

    async def modify_while_deciding(plan: Any) -> OptDecision:
        if plan.modification_number == 0:  # the DSO changes the event meanwhile
            rig.vtn.modify_event(rig.ven_id, "race", [Interval(start, 30 * M, 2)])
        return OptDecision(True, "ok")

    rig.ven.opt_policy = modify_while_deciding
    registration = rig.ven.registration_id
    await rig.ven.poll_once()
    assert rig.ven.client.response_codes["EiEvent"] == 452
    assert rig.vtn.opt_replies == []  # the VTN refused the stale reply
    await rig.ven.poll_once()
    assert rig.vtn.opt_replies == [(rig.ven_id, "race", "optIn")]
    assert rig.book.limit_kw("site-a", "import", start) == 80
    assert rig.ven.events["race"].plan.modification_number == 1
    assert rig.ven.registration_id == registration  # a 452 on a reply is not a lost party


@in_loop
async def test_a_dso_event_reaches_the_plan_end_to_end(tmp_path: Path) -> None:
    """VTN event -> VEN -> constraint book -> plan: the cap holds and the plan says why."""
    shipped = load_scenario(SHIPPED_SCENARIO)  # moved to tomorrow: the VTN runs on real time
    delta = (now() - shipped.start).days * timedelta(days=1) + timedelta(days=1)
    scenario = shift_scenario(shipped, delta)
    night = datetime(2026, 11, 21, 2, tzinfo=UTC) + delta  # the fleet charges hardest then
    vtn = LoopbackVtn(port=free_port())
    await vtn.start()
    book = ConstraintBook(started_at=scenario.start)
    config = ven_config(vtn, tmp_path, programs={
        "oadr://dso/caps": {"mandatory": True, "simple_levels_kw": {"2": 30}}})
    ven = Ven(config, book, clock=lambda: scenario.start + timedelta(hours=4),
              opt_policy=FeasibilityPolicy(snapshot=lambda: book.context_for(scenario)))
    try:
        assert await ven.register()
        vtn.add_event(ven.ven_id or "", "peak", "SIMPLE", "level",
                      [Interval(night, 2 * timedelta(hours=1), 2)],
                      market_context="oadr://dso/caps", targets=[{"resource_id": "site-b"}])
        await ven.poll_once()
        assert ven.events["peak"].applied
        planned = book.context_for(scenario)
        problem, index = build_problem(planned)
        solution = solve(problem)
        assert solution.ok
        schedule = to_schedule(solution, problem, index)
        assert cap_violations(planned, schedule) == []
        load = schedule.node_load_kw(planned.tree, "site-b")
        window = load.index[(load.index >= night) & (load.index < night + timedelta(hours=2))]
        base = node_base_load_kw(planned, "site-b", load.index)
        assert (load + base)[window].max() <= 30 + 1e-6
        # without the event the plan would have drawn more there
        plain, plain_index = build_problem(scenario)
        free = to_schedule(solve(plain), plain, plain_index).node_load_kw(scenario.tree, "site-b")
        assert (free + base)[window].max() > 30 + 1e-6
        reasons = " ".join(explain_binding(solution, problem, index))
        assert "openadr event peak mod 0" in reasons
    finally:
        await ven.stop()
        await vtn.stop()


@in_loop
async def test_a_demand_charge_event_lowers_the_planned_peak_end_to_end(tmp_path: Path) -> None:
    """VTN DEMAND_CHARGE event -> VEN -> a demand charge in the constraint book -> a plan
    whose peak on the target site is lower than without it; the cancellation withdraws it.

    Two EVs on site-a want 20 kWh each within 4 h: at flat prices the plan runs both at
    11 kW first; 6 EUR per kW of peak makes it spread the energy over the 4 h.
    """
    start = now().replace(minute=0, second=0) + timedelta(days=1)  # the VTN runs on real time
    hours = timedelta(hours=4)
    tree = GridTree((GridNode("site-a", NodeKind.SITE),),
                    tuple(Evse(f"A-0{i}", "site-a", max_import_kw=11.0) for i in (1, 2)))
    scenario = Scenario(name="tariff", start=start, interval=15 * M, n_intervals=16, tree=tree,
                        sessions=tuple(Session(f"s-{i}", f"A-0{i}", start, start + hours,
                                               battery_capacity_kwh=60.0, soc_initial=0.3,
                                               max_charge_kw=11.0, energy_requested_kwh=20.0)
                                       for i in (1, 2)))
    vtn = LoopbackVtn(port=free_port())
    await vtn.start()
    book = ConstraintBook(started_at=start)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ven = Ven(ven_config(vtn, tmp_path), book, clock=lambda: start - timedelta(hours=1),
              journal=functools.partial(record_event, ledger))
    try:
        assert await ven.register()
        vtn.add_event(ven.ven_id or "", "tariff", "DEMAND_CHARGE", "price",
                      [Interval(start, hours, 6.0)], market_context="oadr://dso/caps",
                      measurement={"name": "currencyPerKW", "description": "currencyPerKW",
                                   "unit": "EUR", "scale": "none"})
        await ven.poll_once()
        assert vtn.opt_replies == [(ven.ven_id, "tariff", "optIn")]
        [charge] = book.demand_charges(start, start + hours)
        assert (charge.node_id, charge.price_per_kw) == ("site-a", 6.0)
        assert "event tariff mod 0 (oadr://dso/caps) signal DEMAND_CHARGE/price" \
            in charge.source_ref
        assert book.journal[-1].kind == ChangeKind.PRICES
        planned = book.context_for(scenario)
        assert planned.demand_charges == (charge,)
        [journaled] = journal(ledger, event_id="tariff")  # the settlement's record of it
        assert journaled.demand_charges == (charge,) and journaled.applied

        def site_peak_kw(case: Scenario) -> tuple[float, dict[str, Any]]:
            problem, index = build_problem(case)
            schedule = to_schedule(solve(problem), problem, index)
            assert float(schedule.unmet_kwh.sum()) == pytest.approx(0.0, abs=1e-6)
            return float(schedule.node_load_kw(tree, "site-a").max()), dict(
                schedule.solver_stats)

        plain_peak, _ = site_peak_kw(scenario)
        peak, stats = site_peak_kw(planned)
        assert plain_peak == pytest.approx(22.0) and peak < plain_peak / 2
        assert stats["demand_charge_cost"] == pytest.approx(6.0 * peak, rel=1e-6)
        vtn.cancel_event(ven.ven_id or "", "tariff")
        await ven.poll_once()
        assert book.demand_charges(start, start + hours) == []
        assert book.context_for(scenario).demand_charges == ()
    finally:
        await ven.stop()
        await vtn.stop()


@in_loop
async def test_every_modification_lands_in_the_event_journal(tmp_path: Path) -> None:
    vtn = LoopbackVtn(port=free_port())
    await vtn.start()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ven = Ven(ven_config(vtn, tmp_path), ConstraintBook(started_at=now()),
              journal=functools.partial(record_event, ledger))
    try:
        await ven.register()
        start = now() + 10 * M
        vtn.add_event(ven.ven_id or "", "j1", "SIMPLE", "level", [Interval(start, 30 * M, 1)],
                      market_context="oadr://dso/caps")
        await ven.poll_once()
        vtn.modify_event(ven.ven_id or "", "j1", [Interval(start, 30 * M, 2)])
        await ven.poll_once()
        vtn.cancel_event(ven.ven_id or "", "j1")
        await ven.poll_once()
        vtn.add_event(ven.ven_id or "", "bad", "SIMPLE", "level", [Interval(start, 5 * M, 2)],
                      market_context="oadr://nowhere")
        await ven.poll_once()
        rows = [(e.event_id, e.modification_number, e.status, e.applied,
                 [c.import_max_kw for c in e.limits]) for e in journal(ledger)]
        assert rows == [("j1", 0, "far", True, [150.0]), ("j1", 1, "far", True, [80.0]),
                        ("j1", 2, "cancelled", False, [80.0]), ("bad", 0, "invalid", False, [])]
        assert "signal_payload" in journal(ledger, event_id="bad")[0].reason
    finally:
        await ven.stop()
        await vtn.stop()
