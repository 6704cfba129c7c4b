"""``FlexProblem``: the scheduling problem as plain arrays (no clocks, no protocol types).

Indices: ``T`` intervals of ``interval_h`` hours, ``N`` grid nodes (a tree through
``node_parent``), ``E`` EVSEs attached to nodes, ``S`` sessions attached to EVSEs.
A session may draw power in the intervals ``[session_start, session_end)``.
Power is kW on the grid side; energy in the battery is kWh.  Node caps bound the net
flow (EV charging minus discharging plus the node's own base load, summed over the
subtree); ``inf`` means no cap and ``nan`` in ``node_setpoint_kw`` means no setpoint.
Prices net at the node an EVSE is attached to (its meter): the import price for what
the meter draws, the export price for what it feeds back.

Demand charges: ``P`` peak windows, each a node, an interval range ``[peak_start,
peak_end)`` and a price per kW (``peak_price_per_kw``) charged once on the node's highest
net import in the window (the same net flow the caps bound, base load included; a
window in which the node only exports costs nothing).  Windows are independent: two
windows on one node are two charges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _no_ints() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def _no_floats() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


class ProblemError(ValueError):
    """The arrays of a ``FlexProblem`` are inconsistent; the message names the field."""


@dataclass(frozen=True)
class FlexProblem:
    """Everything the scheduler needs, as arrays.  Validated on construction."""

    interval_h: float
    node_parent: IntArray  # (N,) index of the parent node, -1 for a root
    node_import_max_kw: FloatArray  # (N, T) cap on net import, inf = none
    node_export_max_kw: FloatArray  # (N, T) cap on net export, inf = none
    node_base_load_kw: FloatArray  # (N, T) non-EV load of the node itself (+ import)
    node_setpoint_kw: FloatArray  # (N, T) requested net import, nan = none
    evse_node: IntArray  # (E,)
    evse_import_max_kw: FloatArray  # (E, T) hardware rating and any EVSE-level cap
    evse_export_max_kw: FloatArray  # (E, T) 0 where the EVSE cannot discharge
    evse_min_kw: FloatArray  # (E,) minimum non-zero power (MILP only)
    session_evse: IntArray  # (S,)
    session_start: IntArray  # (S,) first interval the session may use
    session_end: IntArray  # (S,) one past the last interval
    session_energy_initial_kwh: FloatArray  # (S,)
    session_energy_target_kwh: FloatArray  # (S,)
    session_energy_floor_kwh: FloatArray  # (S,) lowest SoC energy allowed while discharging
    session_capacity_kwh: FloatArray  # (S,)
    session_charge_max_kw: FloatArray  # (S,)
    session_discharge_max_kw: FloatArray  # (S,)
    session_charge_efficiency: FloatArray  # (S,)
    session_discharge_efficiency: FloatArray  # (S,)
    import_price_per_kwh: FloatArray  # (T,)
    export_price_per_kwh: FloatArray  # (T,)
    degradation_cost_per_kwh: float = 0.02
    unmet_penalty_per_kwh: float = 10.0
    setpoint_penalty_per_kwh: float = 5.0
    tie_break_per_kwh: float = 1e-6
    peak_node: IntArray = field(default_factory=_no_ints)  # (P,) node of each demand charge
    peak_start: IntArray = field(default_factory=_no_ints)  # (P,) first interval of the window
    peak_end: IntArray = field(default_factory=_no_ints)  # (P,) one past the last interval
    peak_price_per_kw: FloatArray = field(default_factory=_no_floats)  # (P,) >= 0
    # (P,) >= 0 kW: the window's peak already reached before the horizon (a receding plan
    # pays only beyond it); None means 0 for every window
    peak_floor_kw: FloatArray | None = None
    node_names: tuple[str, ...] = field(default=())
    evse_names: tuple[str, ...] = field(default=())
    session_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_problem(self)

    @property
    def n_intervals(self) -> int:
        return int(self.import_price_per_kwh.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.node_parent.shape[0])

    @property
    def n_evses(self) -> int:
        return int(self.evse_node.shape[0])

    @property
    def n_sessions(self) -> int:
        return int(self.session_evse.shape[0])

    @property
    def n_peaks(self) -> int:
        return int(self.peak_node.shape[0])

    def session_discharge_kw(self) -> FloatArray:
        """(S, T) discharge bound per session and interval (0 outside availability)."""
        return self._session_bound(self.session_discharge_max_kw, self.evse_export_max_kw)

    def session_charge_kw(self) -> FloatArray:
        """(S, T) charge bound per session and interval (0 outside availability)."""
        return self._session_bound(self.session_charge_max_kw, self.evse_import_max_kw)

    def _session_bound(self, per_session: FloatArray, per_evse: FloatArray) -> FloatArray:
        t = np.arange(self.n_intervals)
        present = (t[None, :] >= self.session_start[:, None]) & (
            t[None, :] < self.session_end[:, None])
        bound = np.minimum(per_session[:, None], per_evse[self.session_evse, :])
        return np.where(present, bound, 0.0)

    def peak_floor(self) -> FloatArray:
        """(P,) the peak each window has already reached (0 where none is given)."""
        if self.peak_floor_kw is None:
            return np.zeros(self.n_peaks)
        return self.peak_floor_kw

    def peak_mask(self) -> NDArray[np.bool_]:
        """(P, T) true in the intervals of each demand-charge window."""
        t = np.arange(self.n_intervals)
        mask: NDArray[np.bool_] = (t[None, :] >= self.peak_start[:, None]) & (
            t[None, :] < self.peak_end[:, None])
        return mask

    def subtree_matrix(self) -> NDArray[np.bool_]:
        """(N, N) ``M[a, n]`` is true when node ``n`` lies in the subtree of ``a``."""
        n = self.n_nodes
        member = np.eye(n, dtype=bool)
        for node in range(n):
            parent = int(self.node_parent[node])
            while parent >= 0:
                member[parent, node] = True
                parent = int(self.node_parent[parent])
        return member

    def subtree_base_load_kw(self) -> FloatArray:
        """(N, T) base load summed over each node's subtree."""
        return self.subtree_matrix().astype(np.float64) @ self.node_base_load_kw

    def meter_nodes(self) -> IntArray:
        """Nodes with at least one EVSE: the points where energy is bought and sold."""
        return np.unique(self.evse_node).astype(np.int64)

    def effective_export_price(self) -> FloatArray:
        """Export price capped at the import price of the same interval.

        Behind one meter energy cannot be bought and sold at the same instant, and the
        cap keeps the net-metering cost convex (an LP); ``warnings`` reports when it bites.
        """
        return np.minimum(self.export_price_per_kwh, self.import_price_per_kwh)

    def tie_break_weights(self) -> FloatArray:
        """(S, T) tiny per-kWh weights that prefer earlier power and make ties unique."""
        n_t, n_s = self.n_intervals, max(self.n_sessions, 1)
        t = (np.arange(self.n_intervals) + 1.0) / n_t
        s = 1.0 + np.arange(self.n_sessions) / (10.0 * n_s)
        return self.tie_break_per_kwh * s[:, None] * t[None, :]


def _check_problem(p: FlexProblem) -> None:
    if not np.isfinite(p.interval_h) or p.interval_h <= 0:
        raise ProblemError(f"interval_h: must be a positive number, got {p.interval_h}")
    n_t = p.import_price_per_kwh.shape[0] if p.import_price_per_kwh.ndim == 1 else -1
    if n_t <= 0:
        raise ProblemError("import_price_per_kwh: must be a non-empty 1-D array")
    n_n, n_e, n_s = p.node_parent.shape[0], p.evse_node.shape[0], p.session_evse.shape[0]
    shapes: dict[str, tuple[int, ...]] = {
        "node_parent": (n_n,), "node_import_max_kw": (n_n, n_t),
        "node_export_max_kw": (n_n, n_t), "node_base_load_kw": (n_n, n_t),
        "node_setpoint_kw": (n_n, n_t), "evse_node": (n_e,),
        "evse_import_max_kw": (n_e, n_t), "evse_export_max_kw": (n_e, n_t),
        "evse_min_kw": (n_e,), "session_evse": (n_s,), "session_start": (n_s,),
        "session_end": (n_s,), "session_energy_initial_kwh": (n_s,),
        "session_energy_target_kwh": (n_s,), "session_energy_floor_kwh": (n_s,),
        "session_capacity_kwh": (n_s,), "session_charge_max_kw": (n_s,),
        "session_discharge_max_kw": (n_s,), "session_charge_efficiency": (n_s,),
        "session_discharge_efficiency": (n_s,), "import_price_per_kwh": (n_t,),
        "export_price_per_kwh": (n_t,),
    }
    n_p = len(p.peak_node) if hasattr(p.peak_node, "__len__") else -1
    shapes.update({"peak_node": (n_p,), "peak_start": (n_p,), "peak_end": (n_p,),
                   "peak_price_per_kw": (n_p,)})
    if p.peak_floor_kw is not None:
        shapes["peak_floor_kw"] = (n_p,)
    for name, shape in shapes.items():
        array = getattr(p, name)
        if not isinstance(array, np.ndarray) or array.shape != shape:
            got = getattr(array, "shape", type(array).__name__)
            raise ProblemError(f"{name}: expected shape {shape}, got {got}")
    finite = ["node_base_load_kw", "evse_import_max_kw", "evse_export_max_kw", "evse_min_kw",
              "session_energy_initial_kwh", "session_energy_target_kwh",
              "session_energy_floor_kwh", "session_capacity_kwh", "session_charge_max_kw",
              "session_discharge_max_kw", "session_charge_efficiency",
              "session_discharge_efficiency", "import_price_per_kwh", "export_price_per_kwh",
              "peak_price_per_kw"]
    for name in finite:
        if not np.all(np.isfinite(getattr(p, name))):
            raise ProblemError(f"{name}: values must be finite")
    nonneg = ["evse_import_max_kw", "evse_export_max_kw", "evse_min_kw",
              "session_energy_initial_kwh", "session_energy_floor_kwh",
              "session_charge_max_kw", "session_discharge_max_kw", "node_import_max_kw",
              "node_export_max_kw", "peak_price_per_kw"]
    for name in nonneg:
        array = getattr(p, name)
        if np.any(np.isnan(array)) or np.any(array < 0):
            raise ProblemError(f"{name}: values must be >= 0 (inf allowed for caps)")
    if p.peak_floor_kw is not None and not (np.all(np.isfinite(p.peak_floor_kw))
                                            and np.all(p.peak_floor_kw >= 0)):
        raise ProblemError("peak_floor_kw: values must be finite and >= 0")
    if np.any(np.isinf(p.node_setpoint_kw)):
        raise ProblemError("node_setpoint_kw: use nan for no setpoint, not inf")
    if n_n and (np.any(p.node_parent < -1) or np.any(p.node_parent >= n_n)):
        raise ProblemError("node_parent: index out of range")
    for node in range(n_n):  # each upward walk must reach a root within n_n steps
        parent, steps = int(p.node_parent[node]), 0
        while parent >= 0:
            steps += 1
            if steps > n_n:
                raise ProblemError(f"node_parent: cycle through node {node}")
            parent = int(p.node_parent[parent])
    if n_e and (np.any(p.evse_node < 0) or np.any(p.evse_node >= n_n)):
        raise ProblemError("evse_node: index out of range")
    if n_s and (np.any(p.session_evse < 0) or np.any(p.session_evse >= n_e)):
        raise ProblemError("session_evse: index out of range")
    if np.any(p.session_start < 0) or np.any(p.session_end > n_t) or np.any(
            p.session_start > p.session_end):
        raise ProblemError("session_start: need 0 <= session_start <= session_end <= T")
    for name in ("peak_node", "peak_start", "peak_end"):
        if not np.issubdtype(getattr(p, name).dtype, np.integer):
            raise ProblemError(f"{name}: must be an integer array")
    if n_p and (np.any(p.peak_node < 0) or np.any(p.peak_node >= n_n)):
        raise ProblemError("peak_node: index out of range")
    if np.any(p.peak_start < 0) or np.any(p.peak_end > n_t) or np.any(
            p.peak_start >= p.peak_end):
        raise ProblemError("peak_start: need 0 <= peak_start < peak_end <= T")
    if np.any(p.session_capacity_kwh <= 0):
        raise ProblemError("session_capacity_kwh: must be > 0")
    if np.any(p.session_energy_initial_kwh > p.session_capacity_kwh + 1e-9):
        raise ProblemError("session_energy_initial_kwh: exceeds session_capacity_kwh")
    if np.any(p.session_energy_target_kwh > p.session_capacity_kwh + 1e-9):
        raise ProblemError("session_energy_target_kwh: exceeds session_capacity_kwh")
    if np.any(p.session_energy_floor_kwh > p.session_capacity_kwh + 1e-9):
        raise ProblemError("session_energy_floor_kwh: exceeds session_capacity_kwh")
    for name in ("session_charge_efficiency", "session_discharge_efficiency"):
        eff = getattr(p, name)
        if np.any(eff <= 0) or np.any(eff > 1):
            raise ProblemError(f"{name}: must be in (0, 1]")
    for name in ("degradation_cost_per_kwh", "unmet_penalty_per_kwh",
                 "setpoint_penalty_per_kwh", "tie_break_per_kwh"):
        value = getattr(p, name)
        if not np.isfinite(value) or value < 0:
            raise ProblemError(f"{name}: must be a finite number >= 0")
    for names, count, label in ((p.node_names, n_n, "node_names"),
                                (p.evse_names, n_e, "evse_names"),
                                (p.session_names, n_s, "session_names")):
        if names and len(names) != count:
            raise ProblemError(f"{label}: expected {count} names, got {len(names)}")
    # the order of sessions on one EVSE must not overlap
    if n_s:
        order = np.lexsort((p.session_start, p.session_evse))
        evse, start, end = p.session_evse[order], p.session_start[order], p.session_end[order]
        clash = (evse[1:] == evse[:-1]) & (start[1:] < end[:-1]) & (start[1:] < end[1:])
        if np.any(clash):
            raise ProblemError("session_start: two sessions overlap on one EVSE")
