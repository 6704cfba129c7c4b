"""gridflex's scheduler: a pure function from a ``FlexProblem`` to a ``Solution``.

No I/O, no clocks, no protocol types.  ``solve`` picks the method: the LP through a
direct HiGHS matrix build, the same LP decomposed per site for large fleets, or the
MILP (minimum power, no simultaneous charge and discharge), or a charging rule
(``optimizer.heuristics``: earliest deadline first, least laxity first, round robin).
``optimizer.pyomo_model`` holds the readable reference formulation of the same LP.
"""

from __future__ import annotations

from typing import Literal

from optimizer.decompose import blocks_of, solve_decomposed
from optimizer.heuristics import solve_rule
from optimizer.lp import solve_lp
from optimizer.milp import solve_milp
from optimizer.problem import FlexProblem, ProblemError
from optimizer.solution import Solution, Status

DECOMPOSE_FROM_SESSIONS = 2500  # measured: below this the single LP is faster
DECOMPOSE_FROM_BLOCKS = 4

Method = Literal["auto", "lp", "decomposed", "milp", "edf", "llf", "round_robin"]


def solve(problem: FlexProblem, *, method: Method = "auto", time_limit_s: float | None = None,
          workers: int = 2) -> Solution:
    """Schedule ``problem``; ``auto`` decomposes per site when the fleet is large; ``edf``,
    ``llf`` and ``round_robin`` are the classic rules analysts compare against."""
    if method in ("edf", "llf", "round_robin"):
        return solve_rule(problem, method)
    if method == "milp":
        return solve_milp(problem, time_limit_s=60.0 if time_limit_s is None else time_limit_s)
    if method == "decomposed" or (
            method == "auto" and problem.n_sessions >= DECOMPOSE_FROM_SESSIONS
            and blocks_of(problem).size >= DECOMPOSE_FROM_BLOCKS):
        return solve_decomposed(problem, workers=workers, time_limit_s=time_limit_s)
    return solve_lp(problem, time_limit_s=time_limit_s)


__all__ = ["FlexProblem", "ProblemError", "Solution", "Status", "solve", "solve_decomposed",
           "solve_lp", "solve_milp", "solve_rule"]
