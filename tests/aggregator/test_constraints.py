"""The constraint book: most restrictive wins, link loss falls back safely, and it says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.constraints import (
    SAFE_DEFAULT_SOURCE,
    BookChange,
    ChangeKind,
    ConstraintBook,
    SafeDefault,
)
from aggregator.model import DemandCharge, GridConstraint, ModelError, PriceSignal
from aggregator.scenario import Scenario

T0 = datetime(2026, 11, 21, 16, tzinfo=UTC)
H = timedelta(hours=1)


def cap(source: str, ref: str, start: datetime, end: datetime, *, node: str = "site-a",
        import_kw: float | None = None, export_kw: float | None = None,
        expires: datetime | None = None, received: datetime = T0) -> GridConstraint:
    return GridConstraint(node_id=node, start=start, end=end, source=source, source_ref=ref,
                          received_at=received, import_max_kw=import_kw, export_max_kw=export_kw,
                          expires_at=expires)


def test_most_restrictive_cap_wins_across_sources_and_why_names_both() -> None:
    book = ConstraintBook(started_at=T0)
    book.publish("openadr", "event:e1", [cap("openadr", "event e1 mod 0", T0, T0 + 2 * H,
                                             import_kw=120)], at=T0)
    book.publish("iec61850", "ied1:ChaPwrLim", [cap("iec61850", "ied1 ChaPwrLim=80kW",
                                                    T0 + H, T0 + 3 * H, import_kw=80)], at=T0)
    assert book.limit_kw("site-a", "import", T0) == 120
    assert book.limit_kw("site-a", "import", T0 + H) == 80
    assert book.limit_kw("site-a", "export", T0 + H) is None
    reasons = book.why("site-a", T0 + 90 * timedelta(minutes=1))
    assert [(r.limit_kw, r.binding, r.constraint.source) for r in reasons] == [
        (80, True, "iec61850"), (120, False, "openadr")]
    assert "binding" in reasons[0].describe() and "ied1 ChaPwrLim=80kW" in reasons[0].describe()


def test_publish_replaces_the_scope_and_withdraw_removes_it() -> None:
    book = ConstraintBook(started_at=T0)
    changes: list[BookChange] = []
    book.subscribe(changes.append)
    book.publish("openadr", "event:e1", [cap("openadr", "mod 0", T0, T0 + H, import_kw=50)], at=T0)
    book.publish("openadr", "event:e1", [cap("openadr", "mod 1", T0, T0 + H, import_kw=70)], at=T0)
    assert book.limit_kw("site-a", "import", T0) == 70
    # the same content again is a poll, not a change
    book.publish("openadr", "event:e1", [cap("openadr", "mod 1", T0, T0 + H, import_kw=70)], at=T0)
    book.withdraw("openadr", "event:e1", at=T0 + timedelta(minutes=5), reason="cancelled")
    assert book.limit_kw("site-a", "import", T0 + timedelta(minutes=6)) is None
    assert [c.kind for c in changes] == [ChangeKind.PUBLISHED, ChangeKind.PUBLISHED,
                                         ChangeKind.WITHDRAWN]
    assert changes[-1].reason == "cancelled"
    book.withdraw("openadr", "event:e1", at=T0 + H, reason="again")  # nothing left to withdraw
    assert len(book.journal) == 3


def test_publishing_nothing_withdraws() -> None:
    book = ConstraintBook(started_at=T0)
    book.publish("openadr", "event:e1", [cap("openadr", "mod 0", T0, T0 + H, import_kw=50)], at=T0)
    book.publish("openadr", "event:e1", [], at=T0)
    assert book.published() == []


def test_publish_rejects_constraints_of_another_source() -> None:
    book = ConstraintBook(started_at=T0)
    with pytest.raises(ModelError, match="constraints"):
        book.publish("openadr", "x", [cap("iec61850", "r", T0, T0 + H, import_kw=1)], at=T0)


def test_expired_constraints_leave_the_book_answer() -> None:
    book = ConstraintBook(started_at=T0)
    book.publish("iec61850", "ied1", [cap("iec61850", "ttl", T0, T0 + 4 * H, import_kw=40,
                                          expires=T0 + H)], at=T0)
    assert book.limit_kw("site-a", "import", T0 + 30 * timedelta(minutes=1)) == 40
    assert book.limit_kw("site-a", "import", T0 + H) is None
    assert book.active(T0 + H, T0 + 2 * H) == []


def test_safe_default_holds_until_first_contact() -> None:
    book = ConstraintBook(started_at=T0, defaults=[SafeDefault("openadr", "site-a",
                                                               import_max_kw=30)])
    reasons = book.why("site-a", T0)
    assert len(reasons) == 1 and reasons[0].limit_kw == 30
    assert reasons[0].constraint.source == SAFE_DEFAULT_SOURCE
    assert "no contact yet" in reasons[0].constraint.source_ref
    book.link_up("openadr", at=T0 + timedelta(minutes=1))
    assert book.limit_kw("site-a", "import", T0 + timedelta(minutes=2)) is None


def test_link_loss_keeps_last_limit_until_expiry_then_safe_default() -> None:
    book = ConstraintBook(started_at=T0, defaults=[
        SafeDefault("iec61850", "site-a", import_max_kw=25, export_max_kw=0)])
    book.link_up("iec61850", at=T0)
    book.publish("iec61850", "ied1", [cap("iec61850", "limit 90", T0, T0 + 8 * H, import_kw=90,
                                          expires=T0 + 2 * H)], at=T0)
    lost_at = T0 + H
    book.link_lost("iec61850", at=lost_at, reason="connection refused")
    # the last valid limit holds while it is valid; export had no limit: default at once
    assert book.limit_kw("site-a", "import", lost_at + timedelta(minutes=30)) == 90
    assert book.limit_kw("site-a", "export", lost_at + timedelta(minutes=30)) == 0
    # after its expiry the safe default applies, with its reason
    later = T0 + 2 * H + timedelta(minutes=1)
    assert book.limit_kw("site-a", "import", later) == 25
    [reason] = [r for r in book.why("site-a", later) if r.direction == "import"]
    assert "connection refused" in reason.constraint.source_ref
    # the fallback windows over a horizon: the gap after expiry only
    spans = [(c.start, c.end) for c in book.active(T0, T0 + 4 * H)
             if c.source == SAFE_DEFAULT_SOURCE and c.import_max_kw is not None]
    assert spans == [(T0 + 2 * H, T0 + 4 * H)]
    # a link that comes back ends the fallback; repeated reports are not new changes
    book.link_up("iec61850", at=later)
    book.link_up("iec61850", at=later)
    assert book.limit_kw("site-a", "import", later) is None
    assert [c.kind for c in book.journal].count(ChangeKind.LINK_UP) == 2


def test_a_default_is_per_source_and_node() -> None:
    with pytest.raises(ModelError, match="defaults"):
        ConstraintBook(started_at=T0, defaults=[SafeDefault("a", "n", import_max_kw=1),
                                                SafeDefault("a", "n", export_max_kw=1)])
    with pytest.raises(ModelError, match="import_max_kw"):
        SafeDefault("a", "n")
    with pytest.raises(ModelError, match="export_max_kw"):
        SafeDefault("a", "n", export_max_kw=-1)
    with pytest.raises(ModelError, match="started_at"):
        ConstraintBook(started_at=datetime(2026, 1, 1))


def test_prices_are_published_per_scope_and_withdrawn_with_it() -> None:
    book = ConstraintBook(started_at=T0)
    price = PriceSignal(start=T0, end=T0 + H, import_price_per_kwh=0.4,
                        export_price_per_kwh=0.3, source="openadr")
    book.publish_prices("openadr", "event:p", [price], at=T0)
    book.publish_prices("openadr", "event:p", [price], at=T0)  # unchanged: not journaled
    assert book.prices(T0 + H / 2, T0 + 2 * H) == [price]
    assert book.prices(T0 + H, T0 + 2 * H) == []
    book.withdraw("openadr", "event:p", at=T0, reason="cancelled")
    assert book.prices(T0, T0 + H) == []
    assert [c.kind for c in book.journal] == [ChangeKind.PRICES, ChangeKind.WITHDRAWN]


def peak(source: str, ref: str, start: datetime, end: datetime, price_per_kw: float = 8.0,
         *, node: str = "site-a") -> DemandCharge:
    return DemandCharge(node_id=node, start=start, end=end, price_per_kw=price_per_kw,
                        source=source, source_ref=ref, received_at=T0)


def test_demand_charges_are_published_replaced_and_withdrawn_per_scope() -> None:
    """Like prices: a scope's charges are replaced by its next publication (a repeat is no
    change), journaled as a price change, and dropped when the event is withdrawn."""
    book = ConstraintBook(started_at=T0)
    changes: list[BookChange] = []
    book.subscribe(changes.append)
    first = peak("openadr", "event dc mod 0", T0, T0 + H, 8.0)
    book.publish_demand_charges("openadr", "event:dc", [first], at=T0)
    book.publish_demand_charges("openadr", "event:dc", [first], at=T0)  # a re-poll
    assert book.demand_charges(T0 + H / 2, T0 + 2 * H) == [first]
    assert book.demand_charges(T0 + H, T0 + 2 * H) == []
    second = peak("openadr", "event dc mod 1", T0, T0 + 2 * H, 12.0)
    book.publish_demand_charges("openadr", "event:dc", [second], at=T0)
    book.publish_demand_charges("iec61850", "other", [peak("iec61850", "x", T0, T0 + H)],
                                at=T0)
    assert [c.source_ref for c in book.demand_charges(T0, T0 + H)] == ["event dc mod 1", "x"]
    book.withdraw("openadr", "event:dc", at=T0, reason="cancelled")
    assert [c.source for c in book.demand_charges(T0, T0 + 2 * H)] == ["iec61850"]
    assert [(c.kind, c.reason) for c in changes] == [
        (ChangeKind.PRICES, "1 demand charge(s)"), (ChangeKind.PRICES, "1 demand charge(s)"),
        (ChangeKind.PRICES, "1 demand charge(s)"), (ChangeKind.WITHDRAWN, "cancelled")]
    book.publish_demand_charges("iec61850", "other", [], at=T0)  # publishing none drops them
    assert book.demand_charges(T0, T0 + 2 * H) == []


def test_demand_charges_of_another_source_or_type_are_refused() -> None:
    """The book keeps provenance honest: a charge is published by its own source."""
    book = ConstraintBook(started_at=T0)
    with pytest.raises(ModelError, match="demand_charges"):
        book.publish_demand_charges("openadr", "x", [peak("iec61850", "r", T0, T0 + H)], at=T0)
    with pytest.raises(ModelError, match="demand_charges: expected DemandCharge"):
        book.publish_demand_charges("openadr", "x", [cap("openadr", "r", T0, T0 + H,
                                                         import_kw=1)], at=T0)  # type: ignore[list-item]
    assert book.journal == ()


def test_context_for_adds_the_books_limits_on_known_nodes(shipped_scenario: Scenario) -> None:
    book = ConstraintBook(started_at=shipped_scenario.start)
    start = shipped_scenario.start
    book.publish("openadr", "e", [cap("openadr", "known", start, start + H, import_kw=10),
                                  cap("openadr", "elsewhere", start, start + H, node="zz",
                                      import_kw=1)], at=start)
    price = PriceSignal(start=start, end=start + H, import_price_per_kwh=1.0,
                        export_price_per_kwh=0.5)
    book.publish_prices("openadr", "e", [price], at=start)
    planned = book.context_for(shipped_scenario)
    assert planned.constraints[:-1] == shipped_scenario.constraints
    assert planned.constraints[-1].source_ref == "known"
    assert planned.prices[-1] == price and planned.sessions == shipped_scenario.sessions
    assert planned.demand_charges == shipped_scenario.demand_charges


def test_context_for_adds_the_books_demand_charges_on_known_nodes(
        shipped_scenario: Scenario) -> None:
    """Charges over the horizon on nodes of the tree are planned; one on an unknown node or
    one after the horizon is not."""
    start, end = shipped_scenario.start, shipped_scenario.end
    site = next(n.node_id for n in shipped_scenario.tree.nodes if n.kind.value == "site")
    book = ConstraintBook(started_at=start)
    known = peak("openadr", "known", start, start + H, node=site)
    book.publish_demand_charges("openadr", "e", [
        known, peak("openadr", "elsewhere", start, start + H, node="zz"),
        peak("openadr", "later", end, end + H, node=site)], at=start)
    planned = book.context_for(shipped_scenario)
    assert planned.demand_charges == (*shipped_scenario.demand_charges, known)


def test_a_failing_listener_neither_loses_the_limit_nor_stops_the_others() -> None:
    book = ConstraintBook(started_at=T0)
    seen: list[BookChange] = []

    def broken(_: BookChange) -> None:
        raise RuntimeError("listener bug")

    book.subscribe(broken)
    book.subscribe(seen.append)
    book.publish("openadr", "event:e1", [cap("openadr", "mod 0", T0, T0 + H, import_kw=50)],
                 at=T0)
    assert book.limit_kw("site-a", "import", T0) == 50
    assert [c.kind for c in seen] == [ChangeKind.PUBLISHED]
