"""Shared fixtures for the aggregator tests: the shipped scenario, solved once per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aggregator.model import Schedule
from aggregator.planning import PlanIndex, build_problem, to_schedule
from aggregator.scenario import Scenario
from aggregator.scenario_file import load_scenario
from optimizer import solve
from optimizer.problem import FlexProblem
from optimizer.solution import Solution

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
