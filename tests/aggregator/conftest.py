"""Shared fixtures for the aggregator tests: the shipped scenario, solved once per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy

from aggregator.ledger import Ledger
from aggregator.model import Schedule
from aggregator.planning import PlanIndex, build_problem, to_schedule
from aggregator.scenario import Scenario
from aggregator.scenario_file import load_scenario
from optimizer import solve
from optimizer.problem import FlexProblem
from optimizer.solution import Solution
from tests.peers.availability import missing_peer

POSTGRES = os.environ.get("GRIDFLEX_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_ledger() -> Iterator[Ledger]:
    """A ledger in a fresh schema of the local PostgreSQL (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES)
    try:
        with admin.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except sqlalchemy.exc.OperationalError as err:
        missing_peer(f"no PostgreSQL at {POSTGRES}: {err}")
    ledger = Ledger(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        yield ledger
    finally:
        ledger.engine.dispose()
        with admin.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        yield Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        yield from postgres_ledger()


REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SCENARIO = REPO_ROOT / "scenarios" / "office-evening-cap.yaml"


@dataclass(frozen=True)
class Solved:
    """A scenario with its problem, index, optimizer solution and domain schedule."""

    scenario: Scenario
    problem: FlexProblem
    index: PlanIndex
    solution: Solution
    schedule: Schedule


@pytest.fixture(scope="session")
def shipped_scenario() -> Scenario:
    return load_scenario(SHIPPED_SCENARIO)


@pytest.fixture(scope="session")
def shipped_solved(shipped_scenario: Scenario) -> Solved:
    """The shipped scenario solved with the default (LP) method.

    Session-scoped: tests that doctor the schedule must copy its frames first.
    """
    problem, index = build_problem(shipped_scenario)
    solution = solve(problem)
    assert solution.ok, solution.status
    return Solved(shipped_scenario, problem, index, solution,
                  to_schedule(solution, problem, index))
