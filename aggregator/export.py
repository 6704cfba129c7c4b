"""Settlement exports (CSV, Parquet) whose rows are hash-chained, so later edits show.

Each row carries ``prev_hash`` and ``row_hash = sha256(prev_hash + canonical row)``; the
last row's hash seals the file.  The canonical row survives a CSV or Parquet round trip
(numbers as exact float text, empty as None), so ``verify_table`` recomputes the chain
from a file's values alone.  One chain serves every table: sessions, DR event intervals,
sessions with their signature verdicts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aggregator.ledger import SessionEnergy

GENESIS = "0" * 64
COLUMNS = ["station_id", "evse_number", "transaction_id", "evse_id", "imported_kwh",
           "exported_kwh", "first_reading", "last_reading", "readings", "resets", "gaps"]
TEXT_COLUMNS = ["station_id", "transaction_id", "evse_id", "first_reading", "last_reading"]


def chain_table(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame[columns]`` plus ``prev_hash`` and ``row_hash = sha256(prev_hash + row)``."""
    table = frame[list(columns)].reset_index(drop=True)
    hashes: list[str] = []
    previous = GENESIS
    for row in table.to_dict("records"):
        hashes.append(previous)
        previous = hashlib.sha256((previous + _canonical(row, columns)).encode()).hexdigest()
    table["prev_hash"] = hashes
    table["row_hash"] = [*hashes[1:], previous] if hashes else []
    return table


def verify_table(table: pd.DataFrame, columns: Sequence[str] = COLUMNS) -> int | None:
    """The first row whose values or links do not match its hashes, or None if intact."""
    previous = GENESIS
    for position, row in enumerate(table.to_dict("records")):
        expected = hashlib.sha256((previous + _canonical(row, columns)).encode()).hexdigest()
        if row["prev_hash"] != previous or row["row_hash"] != expected:
            return position
        previous = expected
    return None


def settlement_table(sessions: Sequence[SessionEnergy]) -> pd.DataFrame:
    """One row per session with its hash chain (energy in kWh, times in UTC)."""
    rows = []
    for session in sessions:
        row: dict[str, object] = asdict(session)
        row["first_reading"] = session.first_reading.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row["last_reading"] = session.last_reading.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows.append(row)
    return chain_table(pd.DataFrame(rows, columns=COLUMNS), COLUMNS)


def read_table(path: Path, text_columns: Sequence[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """A written table back, with its text columns as text and floats exactly as written."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=dict.fromkeys([*text_columns, "prev_hash", "row_hash"], str),
                       keep_default_na=False, na_values=[""])


def write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)


def _canonical(row: Mapping[Any, Any], columns: Sequence[str]) -> str:
    return json.dumps({c: _plain(row[c]) for c in columns}, sort_keys=True,
                      separators=(",", ":"))


def _plain(value: Any) -> Any:
    """Numbers as exact float text, empty / missing as None: equal before and after a
    CSV round trip (where 3 may come back as 3.0 and an empty text as NaN)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return None if math.isnan(value) else repr(float(value))
    if value is None or value is pd.NA or value == "":
        return None
    return str(value)
