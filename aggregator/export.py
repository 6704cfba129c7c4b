"""Settlement exports (CSV, Parquet) whose rows are hash-chained, so later edits show.

Each row carries ``prev_hash`` and ``row_hash = sha256(prev_hash + canonical row)``; the
last row's hash seals the file.  ``verify_chain`` recomputes it from the values alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from aggregator.ledger import SessionEnergy

GENESIS = "0" * 64
COLUMNS = ["station_id", "evse_number", "transaction_id", "evse_id", "imported_kwh",
           "exported_kwh", "first_reading", "last_reading", "readings", "resets", "gaps"]


def _canonical(row: dict[str, object]) -> str:
    return json.dumps({key: row[key] for key in COLUMNS}, sort_keys=True, default=str,
                      separators=(",", ":"))


def settlement_table(sessions: Sequence[SessionEnergy]) -> pd.DataFrame:
    """One row per session with its hash chain (energy in kWh, times in UTC)."""
    rows: list[dict[str, object]] = []
    previous = GENESIS
    for session in sessions:
        row: dict[str, object] = {key: value for key, value in asdict(session).items()}
        row["first_reading"] = session.first_reading.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row["last_reading"] = session.last_reading.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row["prev_hash"] = previous
        previous = hashlib.sha256((previous + _canonical(row)).encode()).hexdigest()
        row["row_hash"] = previous
        rows.append(row)
    return pd.DataFrame(rows, columns=[*COLUMNS, "prev_hash", "row_hash"])


def verify_chain(table: pd.DataFrame) -> int | None:
    """The first row whose values or links do not match its hashes, or None if intact."""
    previous = GENESIS
    for position, row in enumerate(table.to_dict("records")):
        values = {key: (None if pd.isna(row[key]) else row[key]) for key in COLUMNS}
        for key in ("evse_number", "readings", "resets", "gaps"):
            values[key] = int(row[key])
        expected = hashlib.sha256((previous + _canonical(values)).encode()).hexdigest()
        if row["prev_hash"] != previous or row["row_hash"] != expected:
            return position
        previous = expected
    return None


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"transaction_id": str, "evse_id": str, "station_id": str})


def write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
