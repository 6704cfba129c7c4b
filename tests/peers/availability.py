"""One rule for a real peer that is not installed: skip locally, fail under ``CI=true``."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """True when the run is CI's, where every peer must be present."""
    return os.environ.get("CI", "").lower() == "true"


def missing_peer(what: str) -> NoReturn:
    """Skip the test because ``what`` is missing, or fail it when running under CI."""
    if under_ci():
        pytest.fail(f"{what} (CI=true: this peer is required, a missing peer is a failure)")
    pytest.skip(what)
