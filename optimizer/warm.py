"""``WarmLp``: re-solve on a persistent HiGHS when only caps, prices or targets change.

A new DSO cap or price keeps the constraint matrix as it was; HiGHS then restarts from
the previous optimal basis (dual simplex after bound changes, few iterations) instead of
from scratch.  Any change to the matrix (new sessions, a shifted horizon) rebuilds.
"""

from __future__ import annotations

from typing import Any

import highspy
import numpy as np

from optimizer.lp import LpModel, build_lp, new_highs, pass_lp, solve_model
from optimizer.problem import FlexProblem
from optimizer.solution import Solution


def _same_matrix(a: LpModel, b: LpModel) -> bool:
    return (a.matrix.shape == b.matrix.shape
            and np.array_equal(a.matrix.indptr, b.matrix.indptr)
            and np.array_equal(a.matrix.indices, b.matrix.indices)
            and np.array_equal(a.matrix.data, b.matrix.data))


class WarmLp:
    """Keeps the last model and HiGHS instance; ``solve`` reuses them when it can."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self._options = options
        self._model: LpModel | None = None
        self._highs: highspy.Highs | None = None
        self.warm_solves = 0
        self.cold_solves = 0

    def solve(self, problem: FlexProblem, *, time_limit_s: float | None = None) -> Solution:
        """Solve ``problem``, warm from the last basis when only bounds and costs moved."""
        model = build_lp(problem)
        if self._model is not None and self._highs is not None and _same_matrix(self._model,
                                                                                  model):
            h = self._highs
            cols = np.arange(model.n_cols, dtype=np.int32)
            rows = np.arange(model.n_rows, dtype=np.int32)
            h.changeColsCost(model.n_cols, cols, model.col_cost)
            h.changeColsBounds(model.n_cols, cols, model.col_lower, model.col_upper)
            h.changeRowsBounds(model.n_rows, rows, model.row_lower, model.row_upper)
            h.changeObjectiveOffset(model.offset)
            self.warm_solves += 1
            warm = True
        else:
            h = new_highs(self._options)
            pass_lp(h, model)
            self._highs = h
            self.cold_solves += 1
            warm = False
        self._model = model
        solution = solve_model(model, time_limit_s=time_limit_s, highs=h)
        solution.stats["warm_start"] = warm
        return solution
