"""What ``gridflex solve`` and ``demo`` hand an operator: files, a summary and a plot.

Files are written to a temporary folder first and moved into place only when all of
them exist, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from aggregator.audit import cap_violations, evse_limit_violations, node_base_load_kw
from aggregator.model import GridNode, NodeKind, Schedule
from aggregator.planning import horizon_target_kwh
from aggregator.scenario import Scenario


def schedule_table(scenario: Scenario, schedule: Schedule) -> pd.DataFrame:
    """One row per session and interval it is plugged in: the profile sent to a station."""
    evse_of = {s.session_id: s.evse_id for s in scenario.sessions}
    power = schedule.session_power_kw
    n_t, n_s = power.shape
    table = pd.DataFrame({
        "interval_start": np.repeat(schedule.intervals, n_s),
        "session_id": np.tile(np.asarray(power.columns, dtype=object), n_t),
        "power_kw": power.to_numpy().ravel(),
        "soc": schedule.soc.to_numpy().ravel(),
    })
    table = table[table["soc"].notna()]
    table.insert(1, "evse_id", table["session_id"].map(evse_of))
    return table.sort_values(["interval_start", "evse_id"]).reset_index(drop=True)


def summarise(scenario: Scenario, schedule: Schedule) -> dict[str, Any]:
    """Energy, cost, caps and solver facts of a schedule, as plain JSON-ready values."""
    step_h = scenario.interval.total_seconds() / 3600.0
    power = schedule.session_power_kw
    charged = float(power.clip(lower=0).sum().sum() * step_h)
    discharged = float((-power).clip(lower=0).sum().sum() * step_h)
    requested = added = 0.0
    sessions = {s.session_id: s for s in scenario.sessions}
    for session_id in power.columns:
        s = sessions[session_id]
        requested += horizon_target_kwh(s, scenario) - s.energy_initial_kwh
        soc = schedule.soc[session_id].dropna()
        if len(soc):
            added += float(soc.iloc[-1]) * s.battery_capacity_kwh - s.energy_initial_kwh
    violations = cap_violations(scenario, schedule)
    peaks = []
    for node in scenario.tree.nodes:
        load = schedule.node_load_kw(scenario.tree, node.node_id) + node_base_load_kw(
            scenario, node.node_id, schedule.intervals)
        peaks.append({"node_id": node.node_id, "peak_import_kw": round(float(load.max()), 3),
                      "peak_export_kw": round(float(max(0.0, -load.min())), 3)})
    costs = dict(schedule.solver_stats.get("cost_terms", {}))
    return {
        "scenario": scenario.name,
        "status": schedule.status,
        "objective": schedule.objective,
        "sessions": int(power.shape[1]),
        "energy_requested_kwh": round(requested, 3),
        "energy_delivered_kwh": round(added, 3),
        "energy_charged_kwh": round(charged, 3),
        "energy_discharged_kwh": round(discharged, 3),
        "unmet_kwh": round(float(schedule.unmet_kwh.sum()), 3),
        "cap_violations": len(violations),
        "evse_limit_violations": len(evse_limit_violations(scenario, schedule)),
        "import_cost": round(costs.get("import_cost", float("nan")), 4),
        "export_revenue": round(costs.get("export_revenue", float("nan")), 4),
        "demand_charge_cost": round(costs.get("demand_charge_cost", float("nan")), 4),
        "node_peaks": peaks,
        "binding": list(schedule.binding),
        "warnings": list(schedule.warnings),
        "solver": {k: v for k, v in schedule.solver_stats.items() if k != "cost_terms"},
    }


MAX_PLOTTED_NODES = 8


def plotted_nodes(scenario: Scenario, schedule: Schedule) -> list[GridNode]:
    """The nodes worth a panel: every area and feeder, then the sites closest to a cap."""
    upper = [n for n in scenario.tree.nodes if n.kind is not NodeKind.SITE]
    sites = [n for n in scenario.tree.nodes if n.kind is NodeKind.SITE]
    if len(upper) + len(sites) <= MAX_PLOTTED_NODES:
        return upper + sites

    def headroom_kw(node: GridNode) -> float:
        load = schedule.node_load_kw(scenario.tree, node.node_id) + node_base_load_kw(
            scenario, node.node_id, schedule.intervals)
        caps = [c.import_max_kw for c in scenario.constraints
                if c.node_id == node.node_id and c.import_max_kw is not None]
        return min(caps) - float(load.max()) if caps else float("inf")

    room = max(0, MAX_PLOTTED_NODES - len(upper))
    return upper[:MAX_PLOTTED_NODES] + sorted(sites, key=headroom_kw)[:room]


def plot_node_load(scenario: Scenario, schedule: Schedule, path: Path) -> None:
    """PNG of node load against import and export caps (at most ``MAX_PLOTTED_NODES``)."""
    nodes = plotted_nodes(scenario, schedule)
    fig, axes = plt.subplots(len(nodes), 1, figsize=(11, 2.6 * len(nodes) + 0.6), sharex=True,
                             squeeze=False)
    index = schedule.intervals
    step = scenario.interval
    for ax, node in zip(axes[:, 0], nodes, strict=True):
        base = node_base_load_kw(scenario, node.node_id, index)
        ev = schedule.node_load_kw(scenario.tree, node.node_id)
        ax.step(index, base + ev, where="post", color="tab:blue", label="net load (EV + base)")
        ax.step(index, base, where="post", color="tab:gray", lw=0.8, label="base load")
        imp = np.full(len(index), np.inf)
        exp = np.full(len(index), np.inf)
        for c in scenario.constraints:
            if c.node_id != node.node_id:
                continue
            touched = np.array([c.touches(t, t + step) for t in index], dtype=bool)
            if c.import_max_kw is not None:
                imp[touched] = np.minimum(imp[touched], c.import_max_kw)
            if c.export_max_kw is not None:
                exp[touched] = np.minimum(exp[touched], c.export_max_kw)
        if np.isfinite(imp).any():
            ax.step(index, np.where(np.isfinite(imp), imp, np.nan), where="post",
                    color="tab:red", ls="--", label="import cap")
        if np.isfinite(exp).any():
            ax.step(index, np.where(np.isfinite(exp), -exp, np.nan), where="post",
                    color="tab:orange", ls="--", label="export cap (negative)")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("kW")
        ax.set_title(f"{node.kind.value} {node.node_id}", loc="left", fontsize=10)
        ax.legend(loc="upper right", fontsize=7, ncols=4)
    axes[-1, 0].set_xlabel("UTC")
    shown = "" if len(nodes) == len(scenario.tree.nodes) else \
        f", {len(nodes)} of {len(scenario.tree.nodes)} nodes"
    fig.suptitle(f"{scenario.name}: node load against DSO caps ({schedule.status}{shown})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(scenario: Scenario, schedule: Schedule, out_dir: Path) -> dict[str, Any]:
    """Write schedule.csv, schedule.parquet, summary.json and node_load.png atomically."""
    out_dir = Path(out_dir)
    summary = summarise(scenario, schedule)
    staging = Path(tempfile.mkdtemp(prefix="gridflex-"))
    try:
        table = schedule_table(scenario, schedule)
        table.to_csv(staging / "schedule.csv", index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
        table.to_parquet(staging / "schedule.parquet", index=False)
        plot_node_load(scenario, schedule, staging / "node_load.png")
        summary["files"] = {name: str(out_dir / name) for name in
                            ("schedule.csv", "schedule.parquet", "summary.json", "node_load.png")}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            shutil.move(item, out_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a short table for a terminal."""
    rows = [
        ("scenario", summary["scenario"]),
        ("status", summary["status"]),
        ("sessions", summary["sessions"]),
        ("energy requested", f"{summary['energy_requested_kwh']:.1f} kWh (into batteries)"),
        ("energy delivered", f"{summary['energy_delivered_kwh']:.1f} kWh (into batteries)"),
        ("energy charged", f"{summary['energy_charged_kwh']:.1f} kWh (from the grid)"),
        ("unmet", f"{summary['unmet_kwh']:.1f} kWh"),
        ("V2G discharged", f"{summary['energy_discharged_kwh']:.1f} kWh"),
        ("import cost", f"{summary['import_cost']:.2f}"),
        ("export revenue", f"{summary['export_revenue']:.2f}"),
        ("cap violations", summary["cap_violations"]),
        ("solve time", f"{summary['solver'].get('total_s', float('nan')):.2f} s "
                       f"({summary['solver'].get('method', summary['solver'].get('path'))})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"{'node':<14}{'peak import kW':>16}{'peak export kW':>16}")
    for peak in summary["node_peaks"]:
        lines.append(f"{peak['node_id']:<14}{peak['peak_import_kw']:>16.1f}"
                     f"{peak['peak_export_kw']:>16.1f}")
    if summary["binding"]:
        lines.append("")
        lines.append("binding:")
        lines.extend(f"  {b}" for b in summary["binding"][:12])
        if len(summary["binding"]) > 12:
            lines.append(f"  ... and {len(summary['binding']) - 12} more")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
