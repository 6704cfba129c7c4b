"""The DSO adapters' small JSON state files (the OpenADR VEN's registration, the 2030.5
client's Responses sent and MirrorUsagePoints), read and written atomically.

A write goes to a temporary file in the same folder, is flushed and fsynced, then
``os.replace``-d over the old one: a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``; None when there is no such file.

    Raises ``OSError`` when it cannot be read and ``ValueError`` when it is not JSON (UTF-8).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (folders are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, separators=(",", ":"))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
