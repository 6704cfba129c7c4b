"""The constraint book: every source's grid limits per node, with expiry and fail-safe defaults.

Adapters (OpenADR, IEEE 2030.5, IEC 61850, configuration) translate their protocol into
``GridConstraint`` objects and hand them over through the ``ConstraintSink`` interface; the
protocol's own precedence rules (modification numbers, primacy, supersession) are the
adapter's business.  Across sources the book applies one rule: the most restrictive cap wins.

Link loss (rule 4 of the house): while a source's link is down, what it last said stays in
force until it expires; where that leaves a node of the source without a limit, the source's
configured safe default for the node applies.  A source starts *down*: until its first
successful contact the safe default holds.  Every change is journaled with its reason, and
``why`` names the constraints behind the limit in force on a node.

Prices and demand charges travel the same way as limits: published per source and scope
(``publish_prices`` / ``publish_demand_charges``), replaced by the next publication,
dropped by ``withdraw`` together with the scope's limits, and handed to planning by
``context_for``.  Both are journaled as ``ChangeKind.PRICES``: a change of what energy or
peak power costs, which the controller re-plans on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, Protocol, TypeVar

from aggregator.model import (
    DemandCharge,
    GridConstraint,
    ModelError,
    PriceSignal,
    _finite,
    _identifier,
    require_utc,
)
from aggregator.scenario import Scenario

log = logging.getLogger(__name__)

Direction = Literal["import", "export"]
DIRECTIONS: tuple[Direction, Direction] = ("import", "export")
SAFE_DEFAULT_SOURCE = "safe-default"
_T = TypeVar("_T")


class ConstraintSink(Protocol):
    """What an adapter needs of the book: publish, withdraw, and say how its link is."""

    def publish(self, source: str, scope: str, constraints: Sequence[GridConstraint],
                at: datetime) -> None:
        """Replace everything ``source`` said under ``scope`` with ``constraints``."""

    def withdraw(self, source: str, scope: str, at: datetime, reason: str) -> None:
        """Drop what ``source`` said under ``scope`` (an event cancelled or ended)."""

    def publish_prices(self, source: str, scope: str, prices: Sequence[PriceSignal],
                       at: datetime) -> None:
        """Replace the prices ``source`` gave under ``scope`` (withdraw drops them too)."""

    def publish_demand_charges(self, source: str, scope: str,
                               charges: Sequence[DemandCharge], at: datetime) -> None:
        """Replace the demand charges ``source`` gave under ``scope`` (withdraw drops them)."""

    def link_up(self, source: str, at: datetime) -> None:
        """Report a successful contact with the source's server."""

    def link_lost(self, source: str, at: datetime, reason: str) -> None:
        """Report that the source's server cannot be reached."""


@dataclass(frozen=True, slots=True)
class SafeDefault:
    """The limit a node falls back to when ``source`` is silent and its last limits expired."""

    source: str
    node_id: str
    import_max_kw: float | None = None
    export_max_kw: float | None = None

    def __post_init__(self) -> None:
        _identifier(self.source, "source")
        _identifier(self.node_id, "node_id")
        if self.import_max_kw is None and self.export_max_kw is None:
            raise ModelError("import_max_kw", "give import_max_kw and/or export_max_kw")
        for name in ("import_max_kw", "export_max_kw"):
            value = getattr(self, name)
            if value is not None:
                _finite(value, name, minimum=0.0)

    def limit_kw(self, direction: Direction) -> float | None:
        return self.import_max_kw if direction == "import" else self.export_max_kw


class ChangeKind(StrEnum):
    PUBLISHED = "published"
    PRICES = "prices"
    WITHDRAWN = "withdrawn"
    LINK_UP = "link_up"
    LINK_LOST = "link_lost"


@dataclass(frozen=True, slots=True)
class BookChange:
    """One journal entry: what changed in the book, when, and why."""

    kind: ChangeKind
    source: str
    scope: str
    at: datetime
    reason: str
    constraints: tuple[GridConstraint, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitReason:
    """A constraint in force on a node at a moment, and whether it is the binding one."""

    node_id: str
    direction: Direction
    limit_kw: float
    constraint: GridConstraint
    binding: bool

    def describe(self) -> str:
        mark = "binding" if self.binding else "also in force"
        return (f"{self.node_id} {self.direction} <= {self.limit_kw:g} kW ({mark}): "
                f"{self.constraint.source} {self.constraint.source_ref}")


@dataclass(slots=True)
class _Link:
    up: bool
    since: datetime
    reason: str


@dataclass
class ConstraintBook:
    """Merges the grid limits of every source; answers which limits are in force and why."""

    started_at: datetime
    defaults: Sequence[SafeDefault] = ()
    _scopes: dict[tuple[str, str], tuple[GridConstraint, ...]] = field(default_factory=dict)
    _prices: dict[tuple[str, str], tuple[PriceSignal, ...]] = field(default_factory=dict)
    _demand_charges: dict[tuple[str, str], tuple[DemandCharge, ...]] = field(
        default_factory=dict)
    _links: dict[str, _Link] = field(default_factory=dict)
    _journal: list[BookChange] = field(default_factory=list)
    _listeners: list[Callable[[BookChange], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for default in self.defaults:
            key = (default.source, default.node_id)
            if key in seen:
                raise ModelError("defaults", f"two safe defaults for source {default.source!r} "
                                             f"on node {default.node_id!r}")
            seen.add(key)
        self.started_at = require_utc(self.started_at, "started_at")
        for source in sorted({d.source for d in self.defaults}):
            self._links[source] = _Link(False, self.started_at, "no contact yet")

    # -- the sink side ------------------------------------------------------------------
    def publish(self, source: str, scope: str, constraints: Sequence[GridConstraint],
                at: datetime) -> None:
        at, items = _checked(source, scope, at, constraints, GridConstraint, "constraints")
        for item in items:
            if item.source != source:
                raise ModelError("constraints", f"constraint {item.source_ref!r} has source "
                                                f"{item.source!r}, published as {source!r}")
        if self._scopes.get((source, scope), ()) == items:
            return  # a re-poll of the same thing is not a change
        if not items:
            del self._scopes[(source, scope)]
            self._record(BookChange(ChangeKind.WITHDRAWN, source, scope, at, "published empty"))
            return
        self._scopes[(source, scope)] = items
        refs = ", ".join(sorted({c.source_ref for c in items}))
        self._record(BookChange(ChangeKind.PUBLISHED, source, scope, at, refs, items))

    def publish_prices(self, source: str, scope: str, prices: Sequence[PriceSignal],
                       at: datetime) -> None:
        at, items = _checked(source, scope, at, prices, PriceSignal, "prices")
        if not _replace(self._prices, (source, scope), items):
            return
        self._record(BookChange(ChangeKind.PRICES, source, scope, at,
                                f"{len(items)} price interval(s)"))

    def publish_demand_charges(self, source: str, scope: str,
                               charges: Sequence[DemandCharge], at: datetime) -> None:
        at, items = _checked(source, scope, at, charges, DemandCharge, "demand_charges")
        for item in items:
            if item.source != source:
                raise ModelError("demand_charges", f"demand charge {item.source_ref!r} has "
                                 f"source {item.source!r}, published as {source!r}")
        if not _replace(self._demand_charges, (source, scope), items):
            return
        self._record(BookChange(ChangeKind.PRICES, source, scope, at,
                                f"{len(items)} demand charge(s)"))

    def withdraw(self, source: str, scope: str, at: datetime, reason: str) -> None:
        at = require_utc(at, "at")
        had_limits = self._scopes.pop((source, scope), None) is not None
        had_prices = self._prices.pop((source, scope), None) is not None
        had_charges = self._demand_charges.pop((source, scope), None) is not None
        if had_limits or had_prices or had_charges:
            self._record(BookChange(ChangeKind.WITHDRAWN, source, scope, at, reason))

    def link_up(self, source: str, at: datetime) -> None:
        at = require_utc(at, "at")
        link = self._links.get(source)
        if link is None or not link.up:
            self._links[source] = _Link(True, at, "contact")
            self._record(BookChange(ChangeKind.LINK_UP, source, "", at, "contact"))

    def link_lost(self, source: str, at: datetime, reason: str) -> None:
        at = require_utc(at, "at")
        link = self._links.get(source)
        if link is None or link.up:
            self._links[source] = _Link(False, at, reason)
            self._record(BookChange(ChangeKind.LINK_LOST, source, "", at, reason))

    def subscribe(self, listener: Callable[[BookChange], None]) -> None:
        """Call ``listener`` with every change (the controller re-plans on them)."""
        self._listeners.append(listener)

    def _record(self, change: BookChange) -> None:
        self._journal.append(change)
        log.info("constraint book %s: %s/%s at %s: %s", change.kind.value, change.source,
                 change.scope, change.at.isoformat(), change.reason)
        for listener in self._listeners:
            try:  # the limit is in the book; a listener's failure must not undo the source
                listener(change)
            except Exception:
                log.exception("constraint book listener %r failed on %s", listener, change)

    # -- the reading side ---------------------------------------------------------------
    @property
    def journal(self) -> tuple[BookChange, ...]:
        return tuple(self._journal)

    def link_is_up(self, source: str) -> bool:
        link = self._links.get(source)
        return link is not None and link.up

    def links(self) -> dict[str, tuple[bool, datetime, str]]:
        """Every source's link: (up, since when, why) — for health checks."""
        return {source: (link.up, link.since, link.reason)
                for source, link in sorted(self._links.items())}

    def published(self) -> list[GridConstraint]:
        """Everything the sources have said and not withdrawn (expired ones included)."""
        return [c for items in self._scopes.values() for c in items]

    def prices(self, start: datetime, end: datetime) -> list[PriceSignal]:
        """The price signals that overlap ``[start, end)``."""
        return [p for items in self._prices.values() for p in items
                if p.start < end and p.end > start]

    def demand_charges(self, start: datetime, end: datetime) -> list[DemandCharge]:
        """The demand charges whose window overlaps ``[start, end)``."""
        return [c for items in self._demand_charges.values() for c in items
                if c.touches(start, end)]

    def active(self, start: datetime, end: datetime) -> list[GridConstraint]:
        """The constraints in force at some moment of ``[start, end)``, safe defaults included."""
        start = require_utc(start, "start")
        end = require_utc(end, "end")
        if end <= start:
            raise ModelError("end", "must be after start")
        found = [c for c in self.published() if c.touches(start, end)]
        found.extend(self._fallbacks(start, end))
        return found

    def _fallbacks(self, start: datetime, end: datetime) -> Iterable[GridConstraint]:
        """Safe defaults over the gaps a silent source leaves on its nodes."""
        for default in self.defaults:
            link = self._links[default.source]
            if link.up:
                continue
            own = [c for c in self.published()
                   if c.source == default.source and c.node_id == default.node_id]
            for direction in DIRECTIONS:
                limit = default.limit_kw(direction)
                if limit is None:
                    continue
                covered = sorted((c.start, c.effective_end) for c in own
                                 if _cap(c, direction) is not None)
                for gap_start, gap_end in _gaps(max(start, link.since), end, covered):
                    yield GridConstraint(
                        node_id=default.node_id, start=gap_start, end=gap_end,
                        source=SAFE_DEFAULT_SOURCE,
                        source_ref=(f"{default.source} link down since "
                                    f"{link.since.isoformat()} ({link.reason}); "
                                    f"configured {direction} default"),
                        received_at=link.since,
                        import_max_kw=limit if direction == "import" else None,
                        export_max_kw=limit if direction == "export" else None)

    def context_for(self, scenario: Scenario) -> Scenario:
        """``scenario`` with the book's limits, prices and demand charges over its horizon
        added to its own.

        Limits and demand charges on nodes the scenario's tree does not hold cannot be
        planned for: they are left out with a warning naming them.
        """
        tree = scenario.tree
        found = self.active(scenario.start, scenario.end)
        unknown = sorted({c.node_id for c in found if not tree.can_constrain(c.node_id)})
        if unknown:
            log.warning("constraint book: limits on unknown nodes %s are not planned", unknown)
        charges = self.demand_charges(scenario.start, scenario.end)
        elsewhere = sorted({c.node_id for c in charges if not tree.has_node(c.node_id)})
        if elsewhere:
            log.warning("constraint book: demand charges on unknown nodes %s are not planned",
                        elsewhere)
        return dataclasses.replace(
            scenario,
            constraints=scenario.constraints + tuple(c for c in found
                                                     if tree.can_constrain(c.node_id)),
            prices=scenario.prices + tuple(self.prices(scenario.start, scenario.end)),
            demand_charges=scenario.demand_charges + tuple(
                c for c in charges if tree.has_node(c.node_id)))

    def limit_kw(self, node_id: str, direction: Direction, at: datetime) -> float | None:
        """The most restrictive cap in force on ``node_id`` at ``at`` (None: no limit)."""
        reasons = self.why(node_id, at)
        binding = [r.limit_kw for r in reasons if r.direction == direction and r.binding]
        return binding[0] if binding else None

    def why(self, node_id: str, at: datetime) -> list[LimitReason]:
        """Every cap in force on ``node_id`` at ``at``, the binding one marked, per direction."""
        at = require_utc(at, "at")
        in_force = [c for c in self.active(at, at + _INSTANT)
                    if c.node_id == node_id and c.applies_at(at)]
        reasons: list[LimitReason] = []
        for direction in DIRECTIONS:
            capped = sorted(((limit, c) for c in in_force
                             if (limit := _cap(c, direction)) is not None),
                            key=lambda pair: (pair[0], -pair[1].received_at.timestamp()))
            for rank, (limit, constraint) in enumerate(capped):
                reasons.append(LimitReason(node_id, direction, limit, constraint, rank == 0))
        return reasons


_INSTANT = timedelta(microseconds=1)


def _replace(table: dict[tuple[str, str], tuple[_T, ...]], key: tuple[str, str],
             items: tuple[_T, ...]) -> bool:
    """Put ``items`` under ``key`` (none: drop the key); False when nothing changed."""
    if table.get(key, ()) == items:
        return False
    if items:
        table[key] = items
    else:
        del table[key]
    return True


def _checked(source: str, scope: str, at: datetime, items: Iterable[_T], kind: type[_T],
             field_name: str) -> tuple[datetime, tuple[_T, ...]]:
    """Validate what a source publishes: names, a UTC time, and items of the right type."""
    _identifier(source, "source")
    _identifier(scope, "scope")
    checked = tuple(items)
    for item in checked:
        if not isinstance(item, kind):
            raise ModelError(field_name, f"expected {kind.__name__}, got {type(item).__name__}")
    return require_utc(at, "at"), checked


def _cap(constraint: GridConstraint, direction: Direction) -> float | None:
    return constraint.import_max_kw if direction == "import" else constraint.export_max_kw


def _gaps(start: datetime, end: datetime,
          covered: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` that no window of ``covered`` (sorted) covers."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    for window_start, window_end in covered:
        if window_end <= cursor:
            continue
        if window_start >= end:
            break
        if window_start > cursor:
            gaps.append((cursor, window_start))
        cursor = max(cursor, window_end)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return gaps
