"""Parameter sweeps: one scenario replayed under every combination of a few settings.

A sweep parameter is a dotted path into the scenario *document* (the YAML or JSON file),
written like the scenario parser's error paths (``replay.strategy``,
``settings.unmet_penalty_per_kwh``, ``nodes[1].import_max_kw``), with a list of YAML scalar
values.  Several parameters give their cartesian product, the first one varying slowest.
Every variant is the document with its values set, dumped back to YAML and parsed in the
client before any work is sent, so a bad value fails fast, naming the field and the
parameter.  The parsed :class:`ReplayScenario` objects are then replayed serially or on
Dask (a ``LocalCluster`` of worker processes by default, or a running scheduler by
address); only the KPIs come back, in variant order.  Results do not depend on where a
variant ran, apart from the solve-time KPIs (see :func:`comparable`).

The parsed run, not the text, is what is sent to a worker: it was parsed once already to
fail fast, it pickles to a few kB (about 10 kB for the shipped office scenario), the
worker runs exactly what the client validated, and the parse function (injectable here)
never has to be importable on a remote worker.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import yaml

from aggregator.replay import ReplayScenario, replay
from aggregator.scenario_file import ScenarioError, read_text

__all__ = [
    "OPTIONAL_SECTIONS",
    "TIMING_COLUMNS",
    "Parse",
    "SweepError",
    "SweepRunError",
    "Variant",
    "build_variants",
    "comparable",
    "default_parse",
    "parse_params",
    "run_sweep",
    "run_variants",
    "sweep_main",
]

Parse = Callable[[str, str], ReplayScenario]
"""Turns a variant's text and its source name into a run; raises ``ScenarioError``."""

TIMING_COLUMNS: tuple[str, ...] = ("solve_p50_s", "solve_max_s")
"""KPIs measured on the wall clock: they differ between any two runs of one variant."""

OPTIONAL_SECTIONS: tuple[str, ...] = ("settings", "replay", "replay.session_defaults")
"""Mappings a file may leave out (all defaults): a parameter below one creates it."""

TABLE_KPIS: tuple[str, ...] = ("energy_delivered_pct", "unmet_kwh", "cost", "cap_violations",
                               "fallback_plans", "solve_p50_s")
"""The KPIs of the compact table printed by :func:`sweep_main` (all go to Parquet)."""

_KEY = r"[^.\[\]\s=,]+"
_SEGMENT = re.compile(rf"({_KEY})((?:\[[0-9]+\])*)\Z")
_INDEX = re.compile(r"\[([0-9]+)\]")


class SweepError(ValueError):
    """Bad sweep input: a parameter, its path or one of its values (the message names it)."""


class SweepRunError(RuntimeError):
    """A variant's replay raised; ``variant`` names it, ``__cause__`` is the original error."""

    def __init__(self, variant: Variant, error: BaseException) -> None:
        super().__init__(f"{variant.source}: the replay failed: {type(error).__name__}: {error}")
        self.variant = variant


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: its position, parameter values, name, text and parsed run."""

    index: int
    values: tuple[tuple[str, Any], ...]
    source: str  # e.g. "scenarios/x.yaml [replay.strategy=lp, nodes[1].import_max_kw=40]"
    text: str
    run: ReplayScenario


def default_parse(text: str, source: str) -> ReplayScenario:
    """``aggregator.replay_file.parse_replay``: the scenario with its replay sections.

    Imported on first use: it pulls in every DSO adapter."""
    from aggregator.replay_file import parse_replay

    return parse_replay(text, source)


# --- parameters ------------------------------------------------------------------------------

def parse_params(params_text: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["NAME=v1,v2", ...]`` (the ``--param`` options) as ``[(NAME, [v1, v2]), ...]``.

    Each value is read as a YAML scalar (``150`` int, ``0.5`` float, ``lp`` str, ``null``);
    names are checked for syntax here and against the document in :func:`build_variants`."""
    params: list[tuple[str, list[Any]]] = []
    for text in params_text:
        name, sep, values_text = text.partition("=")
        name = name.strip()
        if not sep:
            raise SweepError(f"parameter {text!r}: expected NAME=VALUE[,VALUE...]")
        _path_tokens(name)
        if any(name == seen for seen, _ in params):
            raise SweepError(f"parameter {name}: given twice; list all its values in one "
                             f"--param {name}=v1,v2,...")
        if not values_text.strip():
            raise SweepError(f"parameter {name}: no values; expected {name}=v1,v2,...")
        params.append((name, [_value(name, piece) for piece in values_text.split(",")]))
    return params


def _value(name: str, piece: str) -> Any:
    """One comma-separated value, read as a YAML scalar."""
    if not piece.strip():
        raise SweepError(f"parameter {name}: empty value in the list (write null for none)")
    try:
        value = yaml.safe_load(piece)
    except yaml.YAMLError as err:
        raise SweepError(f"parameter {name}: value {piece.strip()!r} is not a YAML scalar: "
                         f"{err}") from None
    if isinstance(value, dict | list):
        raise SweepError(f"parameter {name}: value {piece.strip()!r} is not a scalar")
    return value


def _path_tokens(name: str) -> list[str | int]:
    """``nodes[1].import_max_kw`` as ``["nodes", 1, "import_max_kw"]``."""
    tokens: list[str | int] = []
    for segment in name.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise SweepError(f"parameter {name or '(empty)'}: not a field path like "
                             f"settings.unmet_penalty_per_kwh or nodes[1].import_max_kw")
        tokens.append(match.group(1))
        tokens.extend(int(index) for index in _INDEX.findall(match.group(2)))
    return tokens


def _show_path(tokens: Sequence[str | int]) -> str:
    out = ""
    for token in tokens:
        out += f"[{token}]" if isinstance(token, int) else (f".{token}" if out else token)
    return out


def _set(document: dict[str, Any], name: str, value: Any) -> None:
    """Set ``value`` at path ``name``: every parent must exist (except the
    :data:`OPTIONAL_SECTIONS`; a null parent becomes a mapping), list indices must be in
    range, a missing last key is created."""
    tokens = _path_tokens(name)
    node: Any = document
    for depth, token in enumerate(tokens):
        here = _show_path(tokens[:depth]) or "the document"
        last = depth == len(tokens) - 1
        if isinstance(token, int):
            if not isinstance(node, list):
                raise SweepError(f"parameter {name}: {here} is not a list")
            if token >= len(node):
                raise SweepError(f"parameter {name}: {_show_path(tokens[:depth + 1])} is out "
                                 f"of range ({here} has {len(node)} entries)")
        elif not isinstance(node, dict):
            raise SweepError(f"parameter {name}: {here} is not a mapping")
        elif not last and token not in node and \
                _show_path(tokens[:depth + 1]) in OPTIONAL_SECTIONS:
            node[token] = None
        elif not last and token not in node:
            raise SweepError(f"parameter {name}: {_show_path(tokens[:depth + 1])} is not in "
                             f"the document")
        if last:
            node[token] = value
            return
        child = node[token]
        if child is None and isinstance(tokens[depth + 1], str):
            child = node[token] = {}
        node = child


def _show_value(value: Any) -> str:
    """A parameter value as written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _unshare(value: Any) -> Any:
    """A fresh copy of a loaded document (YAML aliases become independent copies)."""
    if isinstance(value, dict):
        return {key: _unshare(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshare(item) for item in value]
    return value


# --- variants --------------------------------------------------------------------------------

def build_variants(text: str, source: str, params: Sequence[tuple[str, Sequence[Any]]], *,
                   parse: Parse = default_parse) -> list[Variant]:
    """Every combination of ``params`` applied to the document ``text``, parsed.

    The document itself is parsed first, so its own errors carry its real lines
    (``ScenarioError``).  A variant that does not parse is a :class:`SweepError` naming the
    variant's values and the field; its line is left out, as it would be a line of the
    generated text, not of the file."""
    parse(text, source)
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        raise SweepError(f"parameter {_first_duplicate(names)}: given twice")
    for name, values in params:
        if not values:
            raise SweepError(f"parameter {name}: no values")
    base = yaml.safe_load(text)
    variants: list[Variant] = []
    for index, combo in enumerate(itertools.product(*(values for _, values in params))):
        document = _unshare(base)
        for name, value in zip(names, combo, strict=True):
            _set(document, name, value)
        values = tuple(zip(names, combo, strict=True))
        label = ", ".join(f"{name}={_show_value(value)}" for name, value in values)
        variant_source = f"{source} [{label}]" if label else source
        variant_text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        try:
            run = parse(variant_text, variant_source)
        except ScenarioError as err:
            raise SweepError(f"{variant_source}: {err.path}: {err.reason}") from err
        variants.append(Variant(index, values, variant_source, variant_text, run))
    return variants


def _first_duplicate(names: Sequence[str]) -> str:
    return next(name for i, name in enumerate(names) if name in names[:i])


# --- running ---------------------------------------------------------------------------------

def _replay_kpis(run: ReplayScenario) -> dict[str, Any]:
    """The task: replay one variant (blocking) and return its KPIs (JSON-serialisable)."""
    return dict(replay(run).kpis)


def run_variants(variants: Sequence[Variant], *, scheduler: str | None = None,
                 workers: int = 2, serial: bool = False) -> list[dict[str, Any]]:
    """The KPIs of each variant, in variant order whatever the completion order.

    ``serial``: one after the other in this process.  Otherwise on Dask: the scheduler at
    address ``scheduler`` (left running; ``workers`` is then unused), or a ``LocalCluster``
    of ``workers`` single-thread worker processes started and closed here: a replay is
    mostly Python holding the GIL and runs its own event loop (``asyncio.run``), so each
    runs alone in a process.  A failing variant raises :class:`SweepRunError` and the
    variants not yet done are cancelled."""
    if serial and scheduler is not None:
        raise SweepError("--serial and --scheduler exclude each other")
    if workers < 1:
        raise SweepError(f"--workers: must be at least 1, got {workers}")
    if serial:
        return [_run_one(variant) for variant in variants]
    if not variants:
        return []
    with _client(scheduler, workers) as client:
        return _run_dask(client, variants)


def _run_one(variant: Variant) -> dict[str, Any]:
    try:
        return _replay_kpis(variant.run)
    except Exception as err:
        raise SweepRunError(variant, err) from err


@contextmanager
def _client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A Dask client on ``scheduler``, or on a LocalCluster that lives as long as it."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        failure: str | None = None
        try:
            client = Client(scheduler, set_as_default=False)  # type: ignore[no-untyped-call]
        except (OSError, ValueError) as err:
            failure = str(err) or type(err).__name__
        if failure is not None:
            # The half-built Client sits in the traceback's reference cycle; collected at
            # interpreter exit, after its event loop stopped, it blocks 60 s. Collect it now.
            gc.collect()
            raise SweepError(f"--scheduler {scheduler}: cannot connect: {failure}")
        with client:  # closes the connection only; the remote cluster keeps running
            yield client
        return
    distributed_log = logging.getLogger("distributed")
    level = distributed_log.level
    distributed_log.setLevel(logging.WARNING)
    try:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.WARNING)
        with cluster, Client(cluster, set_as_default=False) as client:  # type: ignore[no-untyped-call]
            yield client
    finally:
        distributed_log.setLevel(level)


def _run_dask(client: Any, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    from distributed import as_completed

    batch = uuid.uuid4().hex[:8]
    futures = [client.submit(_replay_kpis, variant.run,
                             key=f"gridflex-sweep-{batch}-{variant.index}")
               for variant in variants]
    position = {future.key: i for i, future in enumerate(futures)}
    results: list[dict[str, Any] | None] = [None] * len(variants)
    try:
        for future in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
            i = position[future.key]
            try:
                results[i] = cast(dict[str, Any], future.result())
            except Exception as err:
                raise SweepRunError(variants[i], err) from err
    finally:
        pending = [future for future in futures if not future.done()]
        if pending:
            client.cancel(pending)
    return [result for result in results if result is not None]


def _records(variants: Sequence[Variant], kpis: Sequence[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """One row per variant: the parameter values, then the KPIs (a KPI named like a
    parameter is kept as ``NAME (kpi)``)."""
    rows = []
    for variant, values in zip(variants, kpis, strict=True):
        row = dict(variant.values)
        for key, value in values.items():
            row[f"{key} (kpi)" if key in row else key] = value
        rows.append(row)
    return rows


def _frame(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    columns = list(names)
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return pd.DataFrame(list(rows), columns=columns)


def run_sweep(scenario: str | Path, params: Sequence[tuple[str, Sequence[Any]]], *,
              text: str | None = None, scheduler: str | None = None, workers: int = 2,
              serial: bool = False, parse: Parse = default_parse) -> pd.DataFrame:
    """Replay every variant of the scenario file ``scenario`` (or of ``text``, which
    ``scenario`` then only names); one row per variant: the parameters, then the KPIs.

    Raises ``ScenarioError`` (the file), :class:`SweepError` (a parameter or variant,
    before any work is sent) or :class:`SweepRunError` (a replay failed)."""
    frame, _ = _sweep(scenario, params, text=text, scheduler=scheduler, workers=workers,
                      serial=serial, parse=parse)
    return frame


def _sweep(scenario: str | Path, params: Sequence[tuple[str, Sequence[Any]]], *,
           text: str | None, scheduler: str | None, workers: int, serial: bool,
           parse: Parse) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    if text is None:
        text = read_text(scenario)
    variants = build_variants(text, str(scenario), params, parse=parse)
    kpis = run_variants(variants, scheduler=scheduler, workers=workers, serial=serial)
    rows = _records(variants, kpis)
    return _frame([name for name, _ in params], rows), rows


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the wall-clock KPIs: equal for equal variants wherever they ran."""
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


# --- command line ----------------------------------------------------------------------------

def sweep_main(path: Path, params_text: list[str], *, scheduler: str | None = None,
               workers: int = 2, serial: bool = False, out_dir: Path = Path("out/sweep"),
               as_json: bool = False, parse: Parse = default_parse) -> int:
    """``gridflex sweep``: one JSON line per variant (``as_json``) or a compact table on
    stdout, every KPI in ``out_dir/sweep.parquet``.

    Returns 0; 1 when a variant broke a cap, or when a replay failed for another reason
    than a bad value; 2 for bad input (file, parameter, value, options), with the message on
    stderr and nothing written."""
    try:
        params = parse_params(params_text)
        frame, rows = _sweep(path, params, text=None, scheduler=scheduler, workers=workers,
                             serial=serial, parse=parse)
    except ValueError as err:  # ScenarioError, SweepError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err.__cause__, ValueError) else 1
    out_dir.mkdir(parents=True, exist_ok=True)
    written = out_dir / "sweep.parquet"
    _parquet_safe(frame).to_parquet(written)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=_show_value))
    else:
        shown = [c for c in frame.columns
                 if c in {name for name, _ in params} or c in TABLE_KPIS]
        print(frame[shown].to_string(index=False))
        print(f"variants: {len(frame)}; every KPI: {written}")
    violations = pd.to_numeric(frame.get("cap_violations", pd.Series(dtype=float)))
    return 1 if bool((violations.fillna(0) > 0).any()) else 0


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Parameter columns mixing types (``1,lp``) as text, which Parquet can store."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            kinds = {type(v) for v in out[column] if not _missing(v)}
            if len(kinds) > 1:
                out[column] = [None if _missing(v) else _show_value(v) for v in out[column]]
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
